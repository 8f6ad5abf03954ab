package fs

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// pattern returns n deterministic bytes.
func pattern(n int, seed byte) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7/3) + seed
	}
	return b
}

// TestReads: values put through the store read back through the mount with
// the real tools; sizes and mtimes are the entry's.
func TestReads(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	small := []byte("hello, world\nsecond line\n")
	large := pattern(3<<20+17, 1) // past the LRU's per-entry limit
	tm.put("instructions", "guide.md", small, store.PutOptions{})
	tm.put("artifacts", "blob.bin", large, store.PutOptions{})
	tm.put("task", "empty", nil, store.PutOptions{})

	for _, c := range []struct {
		scope, key string
		want       []byte
	}{{"instructions", "guide.md", small}, {"artifacts", "blob.bin", large}, {"task", "empty", nil}} {
		p := tm.path(c.scope, c.key)
		if got := readFile(t, p); !bytes.Equal(got, c.want) {
			t.Errorf("ReadFile %s: %d bytes, want %d", p, len(got), len(c.want))
		}
		if got := run(t, "cat", p); got != string(c.want) {
			t.Errorf("cat %s: %d bytes, want %d", p, len(got), len(c.want))
		}
		e, err := tm.store.Lookup(c.scope, c.key)
		if err != nil {
			t.Fatal(err)
		}
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Size != int64(len(c.want)) {
			t.Errorf("%s: size %d, want %d", p, st.Size, len(c.want))
		}
		if mt := time.Unix(st.Mtim.Unix()); !mt.Equal(e.ModTime) {
			t.Errorf("%s: mtime %v, entry says %v", p, mt, e.ModTime)
		}
		if since := time.Since(e.ModTime); since < 0 || since > time.Minute {
			t.Errorf("%s: mtime %v is not now", p, e.ModTime)
		}
		if st.Nlink != 1 {
			t.Errorf("%s: nlink %d", p, st.Nlink)
		}
	}

	// The usual tools.
	sum := sha256.Sum256(large)
	if out := run(t, "sha256sum", tm.path("artifacts", "blob.bin")); !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
		t.Errorf("sha256sum: %s", out)
	}
	if out := run(t, "head", "-n1", tm.path("instructions", "guide.md")); out != "hello, world\n" {
		t.Errorf("head -n1: %q", out)
	}
	if out := run(t, "grep", "-c", "line", tm.path("instructions", "guide.md")); out != "1\n" {
		t.Errorf("grep -c: %q", out)
	}
	if out := run(t, "wc", "-c", tm.path("instructions", "guide.md")); !strings.HasPrefix(out, "25 ") {
		t.Errorf("wc -c: %q", out)
	}
	if out := run(t, "find", tm.dir, "-type", "f", "-name", "blob.bin"); strings.TrimSpace(out) != tm.path("artifacts", "blob.bin") {
		t.Errorf("find: %q", out)
	}
	dst := t.TempDir() + "/copy"
	run(t, "cp", tm.path("artifacts", "blob.bin"), dst)
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, large) {
		t.Errorf("cp out of the mount: %d bytes", len(got))
	}

	// mmap.
	f, err := os.Open(tm.path("artifacts", "blob.bin"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, len(large), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		t.Fatalf("mmap: %v", err)
	}
	if !bytes.Equal(m, large) {
		t.Errorf("mmap content differs")
	}
	syscall.Munmap(m)
	// pread at an offset.
	buf := make([]byte, 1000)
	if n, err := f.ReadAt(buf, 1<<20+3); err != nil || !bytes.Equal(buf[:n], large[1<<20+3:1<<20+1003]) {
		t.Errorf("ReadAt: %d, %v", n, err)
	}
}

// TestReadsHitLRU: a repeated read of a small value is served from the LRU.
func TestReadsHitLRU(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	val := pattern(20<<10, 3)
	tm.put("instructions", "hot.md", val, store.PutOptions{})
	p := tm.path("instructions", "hot.md")
	readFile(t, p) // first read: a miss that fills the LRU
	c := tm.store.Counters()
	hits, misses := c.Hits.Load(), c.Misses.Load()
	for i := 0; i < 5; i++ {
		if got := readFile(t, p); !bytes.Equal(got, val) {
			t.Fatalf("read %d: wrong content", i)
		}
		if got := run(t, "cat", p); got != string(val) {
			t.Fatalf("cat %d: wrong content", i)
		}
	}
	if h := c.Hits.Load(); h <= hits {
		t.Errorf("hits %d -> %d: repeated reads did not hit the LRU", hits, h)
	}
	if m := c.Misses.Load(); m != misses {
		t.Errorf("misses %d -> %d: a repeated read of a hot value went to the disk", misses, m)
	}
	// .stats shows the counters.
	var st struct{ Hits, Misses int64 }
	if err := json.Unmarshal(readFile(t, tm.path(".stats")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Hits != c.Hits.Load() || st.Misses != c.Misses.Load() {
		t.Errorf(".stats hits/misses %d/%d, counters %d/%d", st.Hits, st.Misses, c.Hits.Load(), c.Misses.Load())
	}
}

// corrupt flips bytes of the blob of scope/key in place (same size).
func (tm *testMount) corrupt(scope, key string) {
	tm.t.Helper()
	e, err := tm.store.Lookup(scope, key)
	if err != nil {
		tm.t.Fatal(err)
	}
	p := tm.store.BlobPath(e.Fingerprint)
	if err := os.Chmod(p, 0o644); err != nil {
		tm.t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_RDWR, 0)
	if err != nil {
		tm.t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, e.Size/2); err != nil {
		tm.t.Fatal(err)
	}
	b[0] ^= 0xff
	if _, err := f.WriteAt(b, e.Size/2); err != nil {
		tm.t.Fatal(err)
	}
}

// TestIntegrity: a value whose blob was corrupted on disk fails to open with
// EIO, and the failure is counted (in the store and in .stats).
func TestIntegrity(t *testing.T) {
	tm := mountStore(t, mountOptions{store: store.Options{HotBytes: 4 << 10, HotEntryMax: 4 << 10}})
	big := pattern(256<<10, 5) // not in the LRU
	tm.put("task", "big", big, store.PutOptions{})
	tm.put("task", "never-read", pattern(100<<10, 9), store.PutOptions{})
	tm.put("task", "fine", []byte("fine"), store.PutOptions{})

	// Read it once (verified, and the kernel may keep its pages).
	if got := readFile(t, tm.path("task", "big")); !bytes.Equal(got, big) {
		t.Fatal("big reads back wrong")
	}
	c := tm.store.Counters()
	before := c.VerifyFailures.Load()

	tm.corrupt("task", "big")
	_, err := os.ReadFile(tm.path("task", "big"))
	wantErrno(t, "read of a corrupted value read before", err, syscall.EIO)

	tm.corrupt("task", "never-read")
	_, err = os.Open(tm.path("task", "never-read"))
	wantErrno(t, "open of a corrupted value", err, syscall.EIO)
	if out, err := runErr("cat", tm.path("task", "never-read")); err == nil {
		t.Errorf("cat of a corrupted value succeeded: %d bytes", len(out))
	} else if !strings.Contains(err.Error(), "Input/output error") {
		t.Errorf("cat of a corrupted value: %v, want Input/output error", err)
	}

	wantFailuresCounted(t, tm, before, 2)
	wantOthersUnaffected(t, tm, "fine", "big")
	// Writing the key again repairs it.
	writeFile(t, tm.path("task", "big"), []byte("new"))
	if got := readFile(t, tm.path("task", "big")); string(got) != "new" {
		t.Errorf("after rewrite: %q", got)
	}
}

// wantFailuresCounted checks that at least n more verification failures
// than before were counted, in the store and in .stats.
func wantFailuresCounted(t *testing.T, tm *testMount, before int64, n int64) {
	t.Helper()
	if after := tm.store.Counters().VerifyFailures.Load(); after < before+n {
		t.Errorf("VerifyFailures %d -> %d, want at least %d more", before, after, n)
	}
	var st struct {
		VerifyFailures int64 `json:"verification_failures"`
	}
	if err := json.Unmarshal(readFile(t, tm.path(".stats")), &st); err != nil {
		t.Fatal(err)
	}
	if st.VerifyFailures < n {
		t.Errorf(".stats verification_failures = %d", st.VerifyFailures)
	}
}

// wantOthersUnaffected checks that after corrupt was refused, key fine
// (holding its own name) still reads, and stat of corrupt still answers.
func wantOthersUnaffected(t *testing.T, tm *testMount, fine, corrupt string) {
	t.Helper()
	if got := readFile(t, tm.path("task", fine)); string(got) != fine {
		t.Errorf("%s: %q", fine, got)
	}
	if _, err := os.Stat(tm.path("task", corrupt)); err != nil {
		t.Errorf("stat of a corrupt key: %v", err)
	}
}
