package fs

// Tests of the read-only mount's no-open mode (noopen.go).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

// opCounter counts the requests of some opcodes that reach the
// filesystem, as the kernel sent them.
type opCounter struct {
	fuse.RawFileSystem
	mu sync.Mutex
	n  map[string]int
}

func (c *opCounter) wrap(raw fuse.RawFileSystem) fuse.RawFileSystem {
	c.RawFileSystem = raw
	return c
}

func (c *opCounter) add(op string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[string]int{}
	}
	c.n[op]++
}

// take returns the counts since the last take.
func (c *opCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.n
	c.n = nil
	if n == nil {
		n = map[string]int{}
	}
	return n
}

func (c *opCounter) Lookup(cancel <-chan struct{}, h *fuse.InHeader, name string, out *fuse.EntryOut) fuse.Status {
	c.add("LOOKUP")
	return c.RawFileSystem.Lookup(cancel, h, name, out)
}

func (c *opCounter) GetAttr(cancel <-chan struct{}, in *fuse.GetAttrIn, out *fuse.AttrOut) fuse.Status {
	c.add("GETATTR")
	return c.RawFileSystem.GetAttr(cancel, in, out)
}

func (c *opCounter) Statx(cancel <-chan struct{}, in *fuse.StatxIn, out *fuse.StatxOut) fuse.Status {
	c.add("STATX")
	return c.RawFileSystem.Statx(cancel, in, out)
}

func (c *opCounter) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	c.add("OPEN")
	return c.RawFileSystem.Open(cancel, in, out)
}

func (c *opCounter) Read(cancel <-chan struct{}, in *fuse.ReadIn, buf []byte) (fuse.ReadResult, fuse.Status) {
	c.add("READ")
	return c.RawFileSystem.Read(cancel, in, buf)
}

func (c *opCounter) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	c.add("FLUSH")
	return c.RawFileSystem.Flush(cancel, in)
}

func (c *opCounter) GetXAttr(cancel <-chan struct{}, h *fuse.InHeader, attr string, dest []byte) (uint32, fuse.Status) {
	c.add("GETXATTR")
	return c.RawFileSystem.GetXAttr(cancel, h, attr, dest)
}

func (c *opCounter) Release(cancel <-chan struct{}, in *fuse.ReleaseIn) {
	c.add("RELEASE")
	c.RawFileSystem.Release(cancel, in)
}

// dropSlab is how often the kernel's caches were dropped (drop_caches):
// another process doing it makes the kernel fetch again what it had.
func dropSlab(t testing.TB) int64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "drop_slab "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// openReadClose is one open(2), read(2) into buf, close(2).
func openReadClose(path string, buf []byte) (int, error) {
	fd, err := syscall.Open(path, syscall.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	n, err := syscall.Read(fd, buf)
	syscall.Close(fd)
	return n, err
}

// dropPages makes the kernel forget the cached pages of path, so that its
// next read is a READ request.
func dropPages(t testing.TB, path string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		t.Fatalf("fadvise DONTNEED %s: %v", path, err)
	}
}

// mmapHelperEnv makes the test binary, run with it set to a path, map that
// file, check its SHA-256 against the one in mmapHelperEnv_SHA256, and exit.
const mmapHelperEnv = "IRISKVFS_TEST_MMAP"

func init() {
	p := os.Getenv(mmapHelperEnv)
	if p == "" {
		return
	}
	f, err := os.Open(p)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	fi, err := f.Stat()
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	m, err := syscall.Mmap(int(f.Fd()), 0, int(fi.Size()), syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		fmt.Println("mmap:", err)
		os.Exit(1)
	}
	sum := sha256.Sum256(m)
	if got := hex.EncodeToString(sum[:]); got != os.Getenv(mmapHelperEnv+"_SHA256") {
		fmt.Println("mapped content has SHA-256", got)
		os.Exit(1)
	}
	os.Exit(0)
}

func readOnlyMount(t testing.TB, o mountOptions) *testMount {
	o.fs.ReadOnly = true
	return mountStore(t, o)
}

// TestReadOnlyNoOpen: on a read-only mount small (LRU) and large (blob
// file) values read back right with every kind of read, the kernel sends
// OPEN once (answered ENOSYS) and never again, and a hot open+read+close
// reaches the daemon not at all. A value's reads are counted once, at its
// first fetch.
func TestReadOnlyNoOpen(t *testing.T) {
	ops := &opCounter{}
	tm := readOnlyMount(t, mountOptions{wrapRaw: ops.wrap, store: store.Options{TrackReads: []string{"instructions"}}})
	small := pattern(20<<10, 1)
	large := pattern(3<<20+17, 2) // past the LRU's per-entry limit: read from its blob file
	tm.put("instructions", "hot.md", small, store.PutOptions{})
	tm.put("artifacts", "big.bin", large, store.PutOptions{})
	tm.put("task", "empty", nil, store.PutOptions{})
	want := map[string][]byte{
		tm.path("instructions", "hot.md"): small,
		tm.path("artifacts", "big.bin"):   large,
		tm.path("task", "empty"):          nil,
	}
	for p, v := range want {
		if got := readFile(t, p); !bytes.Equal(got, v) {
			t.Errorf("ReadFile %s: %d bytes, want %d", p, len(got), len(v))
		}
		if got := run(t, "cat", p); got != string(v) {
			t.Errorf("cat %s: %d bytes, want %d", p, len(got), len(v))
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() != int64(len(v)) {
			t.Errorf("stat %s: %v, %v", p, fi, err)
		}
	}
	// cp, sha256sum, pread at offsets, and mmap, of the large one.
	big := tm.path("artifacts", "big.bin")
	dst := t.TempDir() + "/copy"
	run(t, "cp", big, dst)
	if got, _ := os.ReadFile(dst); !bytes.Equal(got, large) {
		t.Errorf("cp out of the mount: %d bytes", len(got))
	}
	sum := sha256.Sum256(large)
	dropPages(t, big) // served by the daemon again, from the kept blob file
	if out := run(t, "sha256sum", big); !strings.HasPrefix(out, hex.EncodeToString(sum[:])) {
		t.Errorf("sha256sum: %s", out)
	}
	dropPages(t, big)
	f, err := os.Open(big)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 100<<10)
	for _, off := range []int64{0, 1<<20 + 3, int64(len(large)) - 1000} {
		n, err := f.ReadAt(buf, off)
		if err != nil && n != int(int64(len(large))-off) {
			t.Errorf("ReadAt %d: %d, %v", off, n, err)
		}
		if !bytes.Equal(buf[:n], large[off:off+int64(n)]) {
			t.Errorf("ReadAt %d: wrong content", off)
		}
	}
	// mmap, in another process: a page fault on this mount in the process
	// that serves it can deadlock against the Go runtime (a stop-the-world
	// waits for the faulting thread, which waits for the server).
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), mmapHelperEnv+"="+big, mmapHelperEnv+"_SHA256="+hex.EncodeToString(sum[:]))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("mmap of %s: %v: %s", big, err, out)
	}
	f.Close()

	first := ops.take()
	if first["OPEN"] > 1 {
		t.Errorf("%d OPEN requests: the kernel went on opening after the first ENOSYS", first["OPEN"])
	}
	if first["RELEASE"] != 0 {
		t.Errorf("%d RELEASE requests", first["RELEASE"])
	}
	if first["FLUSH"] > 1 {
		t.Errorf("%d FLUSH requests: the kernel went on flushing after the first ENOSYS", first["FLUSH"])
	}
	t.Logf("requests while warming up: %v", first)

	// Hot: no request at all.
	drops := dropSlab(t)
	const loops = 300
	for i := 0; i < loops; i++ {
		for p, v := range want {
			n, err := openReadClose(p, buf)
			if err != nil || !bytes.Equal(buf[:n], v[:min(len(v), len(buf))]) {
				t.Fatalf("open+read+close %s: %d, %v", p, n, err)
			}
		}
	}
	hot := ops.take()
	for _, op := range []string{"OPEN", "FLUSH", "RELEASE"} {
		if hot[op] != 0 {
			t.Errorf("%d hot open+read+close: %d %s requests, want none", loops*len(want), hot[op], op)
		}
	}
	if dropSlab(t) == drops {
		for _, op := range []string{"READ", "LOOKUP", "GETATTR", "STATX"} {
			if hot[op] != 0 {
				t.Errorf("%d hot open+read+close: %d %s requests, want none", loops*len(want), hot[op], op)
			}
		}
	} else {
		t.Logf("another process dropped the kernel's caches meanwhile: %v", hot)
	}

	// Counted as one read: what the kernel serves from its cache is not seen.
	if r := tm.store.Reads()["instructions/hot.md"]; r != 1 {
		t.Errorf("reads of instructions/hot.md: %d, want 1 (its one fetch)", r)
	}
}

// TestReadOnlyWritableStillOpens: a writable mount still opens every file
// (the handle verifies, and passthrough needs it).
func TestReadOnlyWritableStillOpens(t *testing.T) {
	ops := &opCounter{}
	tm := mountStore(t, mountOptions{wrapRaw: ops.wrap})
	tm.put("task", "k", []byte("value"), store.PutOptions{})
	ops.take()
	buf := make([]byte, 64)
	for i := 0; i < 5; i++ {
		if n, err := openReadClose(tm.path("task", "k"), buf); err != nil || string(buf[:n]) != "value" {
			t.Fatalf("read: %q, %v", buf[:n], err)
		}
	}
	if n := ops.take()["OPEN"]; n != 5 {
		t.Errorf("5 opens on a writable mount: %d OPEN requests", n)
	}
}

// TestReadOnlyIntegrity: a corrupt value fails its first read with EIO,
// counted; a large value read before, whose blob was corrupted since, fails
// when the kernel fetches it again.
func TestReadOnlyIntegrity(t *testing.T) {
	tm := readOnlyMount(t, mountOptions{store: store.Options{HotBytes: 4 << 10, HotEntryMax: 4 << 10}})
	big := pattern(256<<10, 5) // not in the LRU
	tm.put("task", "big", big, store.PutOptions{})
	tm.put("task", "never-read", pattern(100<<10, 9), store.PutOptions{})
	tm.put("task", "fine", []byte("fine"), store.PutOptions{})
	if got := readFile(t, tm.path("task", "big")); !bytes.Equal(got, big) {
		t.Fatal("big reads back wrong")
	}
	c := tm.store.Counters()
	before := c.VerifyFailures.Load()

	tm.corrupt("task", "never-read")
	_, err := os.ReadFile(tm.path("task", "never-read"))
	wantErrno(t, "read of a corrupted value", err, syscall.EIO)
	if out, err := runErr("cat", tm.path("task", "never-read")); err == nil {
		t.Errorf("cat of a corrupted value succeeded: %d bytes", len(out))
	} else if !strings.Contains(err.Error(), "Input/output error") {
		t.Errorf("cat of a corrupted value: %v, want Input/output error", err)
	}

	tm.corrupt("task", "big")
	dropPages(t, tm.path("task", "big"))
	_, err = os.ReadFile(tm.path("task", "big"))
	wantErrno(t, "read of a value corrupted after it was read", err, syscall.EIO)

	wantFailuresCounted(t, tm, before, 2)
	wantOthersUnaffected(t, tm, "fine", "big")
	// Writing the key again (through the store: the mount is read-only)
	// repairs it.
	tm.put("task", "big", []byte("new"), store.PutOptions{})
	tm.m.Settle()
	if got := readFile(t, tm.path("task", "big")); string(got) != "new" {
		t.Errorf("after rewrite: %q", got)
	}
}

// TestReadOnlyVirtualFilesFresh: .stats and _index.json show the store as it
// is at each open, with their exact size, although the kernel keeps every
// file's pages on a read-only mount.
func TestReadOnlyVirtualFilesFresh(t *testing.T) {
	tm := readOnlyMount(t, mountOptions{})
	statsPath, indexPath := tm.path(".stats"), tm.path("task", indexName)
	read := func(p string) []byte {
		t.Helper()
		b := readFile(t, p)
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Size() != int64(len(b)) {
			t.Errorf("%s: stat size %d, content %d bytes", p, fi.Size(), len(b))
		}
		return b
	}
	taskKeys := func() int64 {
		t.Helper()
		var st store.Stats
		if err := json.Unmarshal(read(statsPath), &st); err != nil {
			t.Fatalf(".stats: %v", err)
		}
		for _, sc := range st.Scopes {
			if sc.Name == "task" {
				return sc.Keys
			}
		}
		t.Fatal(".stats has no task scope")
		return 0
	}
	indexKeys := func() []string {
		t.Helper()
		var idx map[string]json.RawMessage
		if err := json.Unmarshal(read(indexPath), &idx); err != nil {
			t.Fatalf("_index.json: %v", err)
		}
		var keys []string
		for k := range idx {
			keys = append(keys, k)
		}
		return sorted(keys)
	}
	if n := taskKeys(); n != 0 {
		t.Fatalf(".stats: %d task keys at first", n)
	}
	if k := indexKeys(); len(k) != 0 {
		t.Fatalf("_index.json: %v at first", k)
	}
	// Held open across the changes: it keeps its snapshot, whole.
	old, err := os.Open(indexPath)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	oldFirst := make([]byte, 1<<20)
	n, _ := old.ReadAt(oldFirst, 0)
	oldFirst = oldFirst[:n]

	for i, key := range []string{"a", "bb", "ccc"} {
		tm.put("task", key, bytes.Repeat([]byte("x"), 100*(i+1)), store.PutOptions{})
		if n := taskKeys(); n != int64(i+1) {
			t.Errorf("after putting %s: .stats shows %d task keys, want %d", key, n, i+1)
		}
		if k := indexKeys(); !contains(k, key) || len(k) != i+1 {
			t.Errorf("after putting %s: _index.json has %v", key, k)
		}
	}
	if err := tm.store.Delete("task", "a"); err != nil {
		t.Fatal(err)
	}
	if n := taskKeys(); n != 2 {
		t.Errorf("after a delete: .stats shows %d task keys", n)
	}
	if k := indexKeys(); contains(k, "a") {
		t.Errorf("after a delete: _index.json has %v", k)
	}
	again := make([]byte, 1<<20)
	n, _ = old.ReadAt(again, 0)
	if !bytes.Equal(again[:n], oldFirst) {
		t.Errorf("a descriptor opened before the changes read %q, then %q", oldFirst, again[:n])
	}
	// Unchanged content keeps its inode (the kernel keeps its pages).
	var st1, st2 syscall.Stat_t
	if err := syscall.Stat(indexPath, &st1); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(indexPath, &st2); err != nil {
		t.Fatal(err)
	}
	if st1.Ino != st2.Ino {
		t.Errorf("_index.json unchanged, inode %d then %d", st1.Ino, st2.Ino)
	}
	for _, name := range []string{".stats", "task"} {
		if !contains(listDir(t, tm.dir), name) {
			t.Errorf("the root does not list %s", name)
		}
	}
	if !contains(listDir(t, tm.path("task")), indexName) {
		t.Errorf("task does not list %s", indexName)
	}
}

// TestReadOnlyValueReplaced: a value replaced or removed through the store
// while mounted read-only shows at the next open, whole; a descriptor
// opened before keeps reading the value it opened. Under churn no read is
// torn.
func TestReadOnlyValueReplaced(t *testing.T) {
	tm := readOnlyMount(t, mountOptions{})
	for _, c := range []struct {
		scope, key string
		size       int
	}{{"task", "small", 5000}, {"artifacts", "large", 2<<20 + 5}} {
		p := tm.path(c.scope, c.key)
		v1, v2 := makeValue(1, 1, c.size), makeValue(1, 2, c.size*2+1)
		tm.put(c.scope, c.key, v1, store.PutOptions{})
		tm.wantValue(t, c.scope, c.key, v1)
		drops := dropSlab(t)
		held, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		tm.put(c.scope, c.key, v2, store.PutOptions{})
		tm.m.Settle()
		tm.wantValue(t, c.scope, c.key, v2)
		dropPages(t, p) // the held one is read from the daemon again
		got := make([]byte, len(v1)+10)
		n, _ := held.ReadAt(got, 0)
		// Another process emptying the caches can make the kernel forget
		// the inode the value was read through before held opened the name:
		// held then got an inode never read, whose value is gone (ESTALE,
		// README "Read-only mounts").
		if !bytes.Equal(got[:n], v1) && dropSlab(t) == drops {
			_, _, cerr := checkValue(got[:n])
			t.Errorf("%s: a descriptor opened before the replacement read %d bytes (%v), want the old value", c.key, n, cerr)
		}
		held.Close()
		tm.put(c.scope, c.key, v1, store.PutOptions{}) // and back
		tm.m.Settle()
		tm.wantValue(t, c.scope, c.key, v1)
		if err := tm.store.Delete(c.scope, c.key); err != nil {
			t.Fatal(err)
		}
		tm.m.Settle()
		_, err = os.ReadFile(p)
		wantErrno(t, "read after delete", err, syscall.ENOENT)
	}

	// Churn: the store replaces a key over and over while readers read it.
	const key = "churn"
	tm.put("task", key, makeValue(0, 0, 100), store.PutOptions{})
	var (
		stop         atomic.Bool
		reads, stale atomic.Int64
		wg           sync.WaitGroup
		errMu        sync.Mutex
		errs         []string
	)
	report := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(errs) < 10 {
			errs = append(errs, fmt.Sprintf(format, args...))
		}
	}
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				b, err := os.ReadFile(tm.path("task", key))
				if errors.Is(err, syscall.ESTALE) {
					// The value read was replaced, and its blob removed,
					// between the lookup and the first byte.
					stale.Add(1)
					continue
				}
				if err != nil {
					report("read: %v", err)
					continue
				}
				reads.Add(1)
				if _, _, err := checkValue(b); err != nil {
					report("torn read: %v", err)
				}
			}
		}()
	}
	rng := rand.New(rand.NewSource(1))
	deadline := time.Now().Add(time.Second)
	seq := 0
	for seq = 1; time.Now().Before(deadline); seq++ {
		tm.put("task", key, makeValue(0, seq, 32+rng.Intn(200<<10)), store.PutOptions{})
	}
	stop.Store(true)
	wg.Wait()
	t.Logf("%d replacements, %d reads, %d ESTALE", seq, reads.Load(), stale.Load())
	for _, e := range errs {
		t.Error(e)
	}
	if reads.Load() == 0 {
		t.Error("no reads happened")
	}
	tm.m.Settle()
	last, _ := tm.get("task", key)
	tm.wantValue(t, "task", key, last)
}

// TestReadOnlyXattrsAndEROFS: metadata reads work, and every change fails
// with EROFS.
func TestReadOnlyXattrsAndEROFS(t *testing.T) {
	tm := readOnlyMount(t, mountOptions{})
	tm.put("task", "k", []byte("v"), store.PutOptions{Meta: map[string]string{"owner": "me"}})
	p := tm.path("task", "k")
	readFile(t, p)
	attrs := getfattrDump(t, p)
	e, _ := tm.store.Lookup("task", "k")
	if got := attrs["user.iris.fingerprint"]; got != fmt.Sprintf("%x", e.Fingerprint[:]) {
		t.Errorf("fingerprint %q", got)
	}
	if got := attrs["user.iris.meta.owner"]; got != "me" {
		t.Errorf("meta.owner %q (%v)", got, attrs)
	}
	wantErrno(t, "setxattr", unix.Setxattr(p, "user.iris.meta.x", []byte("1"), 0), syscall.EROFS)
	wantErrno(t, "removexattr", unix.Removexattr(p, "user.iris.meta.owner"), syscall.EROFS)
	_, err := os.OpenFile(p, os.O_WRONLY, 0)
	wantErrno(t, "open for writing", err, syscall.EROFS)
	_, err = os.OpenFile(p, os.O_RDONLY|os.O_TRUNC, 0)
	wantErrno(t, "open O_TRUNC", err, syscall.EROFS)
	wantErrno(t, "truncate", os.Truncate(p, 0), syscall.EROFS)
	wantErrno(t, "create", os.WriteFile(tm.path("task", "n"), []byte("v"), 0o644), syscall.EROFS)
	wantErrno(t, "rename", os.Rename(p, tm.path("task", "m")), syscall.EROFS)
	wantErrno(t, "unlink", os.Remove(p), syscall.EROFS)
	wantErrno(t, "chmod", os.Chmod(p, 0o600), syscall.EROFS)
	wantErrno(t, "touch", os.Chtimes(p, time.Now(), time.Now()), syscall.EROFS)
	tm.wantValue(t, "task", "k", []byte("v"))
}

// TestReadOnlyIndexSnapshotReused: on a read-only mount a lookup of
// _index.json reuses its snapshot while the scope is unchanged and no entry
// in it has expired, without generating it again; a change, or the first
// expiry, makes the next lookup generate it afresh.
func TestReadOnlyIndexSnapshotReused(t *testing.T) {
	clock := newFakeClock()
	tm := readOnlyMount(t, mountOptions{clock: clock})
	tm.put("task", "short", []byte("s"), store.PutOptions{TTL: time.Hour})
	tm.put("task", "long", []byte("l"), store.PutOptions{TTL: 48 * time.Hour})
	p := tm.path("task", indexName)
	scope := tm.m.root.fs.scopes["task"].Operations().(*scopeDir)
	keys := func() []string {
		t.Helper()
		var idx map[string]json.RawMessage
		if err := json.Unmarshal(readFile(t, p), &idx); err != nil {
			t.Fatalf("_index.json: %v", err)
		}
		var k []string
		for key := range idx {
			k = append(k, key)
		}
		return sorted(k)
	}
	if k := keys(); len(k) != 2 {
		t.Fatalf("_index.json lists %v", k)
	}
	before := scope.index.generated.Load()
	for range 5 {
		if k := keys(); len(k) != 2 {
			t.Fatalf("_index.json lists %v", k)
		}
	}
	if n := scope.index.generated.Load() - before; n != 0 {
		t.Errorf("5 reads of an unchanged _index.json generated it %d times, want 0", n)
	}
	clock.Advance(2 * time.Hour) // "short" expires
	if k := keys(); len(k) != 1 || k[0] != "long" {
		t.Errorf("after the first expiry: _index.json lists %v, want [long]", k)
	}
	tm.put("task", "new", []byte("n"), store.PutOptions{})
	if k := keys(); len(k) != 2 || !contains(k, "new") {
		t.Errorf("after a put: _index.json lists %v, want [long new]", k)
	}
}
