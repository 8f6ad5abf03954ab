package store_test

import (
	"bytes"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// utCheckIntegrityFailure checks that reading scope/key fails with
// ErrIntegrity through every read path, that no corrupt bytes come out, and
// that each refusal is counted.
func utCheckIntegrityFailure(t *testing.T, s *store.Store, scope, key string) {
	t.Helper()
	before := s.Counters().VerifyFailures.Load()
	b, e, err := s.Get(scope, key)
	utMustFail(t, err, store.ErrIntegrity, "Get of a corrupt value")
	if b != nil || e.Size != 0 {
		t.Fatalf("Get returned %d bytes / entry %+v with its integrity error", len(b), e)
	}
	v, err := s.Open(scope, key)
	utMustFail(t, err, store.ErrIntegrity, "Open of a corrupt value")
	if v != nil {
		t.Fatal("Open returned a value with its integrity error")
	}
	if !strings.Contains(err.Error(), scope+"/"+key) {
		t.Fatalf("integrity error %q does not name the key", err)
	}
	if got := s.Counters().VerifyFailures.Load() - before; got != 2 {
		t.Fatalf("VerifyFailures went up by %d, want 2", got)
	}
	// Lookup (metadata only) still works: the entry exists.
	if _, err := s.Lookup(scope, key); err != nil {
		t.Fatalf("Lookup of a key with a corrupt value: %v", err)
	}
}

func TestIntegrityCorruptBlob(t *testing.T) {
	for _, tc := range []struct {
		name string
		size int
	}{{"small", 100}, {"large", 200 << 10}} {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := utOpen(t, store.Options{HotEntryMax: 64 << 10})
			value := strings.Repeat("0123456789abcdef", tc.size/16)
			e := utPut(t, s, "task", "k", value, store.PutOptions{})
			utPut(t, s, "task", "fine", "unaffected", store.PutOptions{})
			utCorrupt(t, s, e.Fingerprint)
			utCheckIntegrityFailure(t, s, "task", "k")
			// Still refused the second time: nothing cached the bad bytes.
			utCheckIntegrityFailure(t, s, "task", "k")
			utMustGet(t, s, "task", "fine", "unaffected")
			st, _ := s.Stats()
			if st.VerifyFailures != 4 {
				t.Fatalf("stats report %d verification failures", st.VerifyFailures)
			}
			// Writing the same value again restores the blob.
			utPut(t, s, "task", "k", value, store.PutOptions{})
			utMustGet(t, s, "task", "k", value)
		})
	}
}

func TestIntegrityWrongSizeAndMissingBlob(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	e := utPut(t, s, "task", "grown", "short", store.PutOptions{})
	p := s.BlobPath(e.Fingerprint)
	os.Chmod(p, 0o644)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.Write([]byte(" and longer"))
	f.Close()
	utCheckIntegrityFailure(t, s, "task", "grown")

	e = utPut(t, s, "task", "gone", "deleted blob", store.PutOptions{})
	if err := os.Remove(s.BlobPath(e.Fingerprint)); err != nil {
		t.Fatal(err)
	}
	utCheckIntegrityFailure(t, s, "task", "gone")

	// A Base writer on a corrupt value refuses to copy it.
	_, err = s.NewWriter("task", "gone", store.PutOptions{Base: true})
	utMustFail(t, err, store.ErrIntegrity, "Base writer over a missing blob")
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files %v", tmp)
	}
}

// A corrupted file whose mtime is put back is still caught: verification
// of large values is remembered only while the file is unchanged.
func TestIntegrityLargeValueReverifiedWhenFileChanges(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotEntryMax: 1024})
	value := bytes.Repeat([]byte("large value "), 1000)
	e, err := s.Put("task", "big", bytes.NewReader(value), store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		got, _, err := s.Get("task", "big")
		if err != nil || !bytes.Equal(got, value) {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	if h, m := s.Counters().Hits.Load(), s.Counters().Misses.Load(); h != 0 || m != 3 {
		t.Fatalf("a value past HotEntryMax was served from memory: hits %d misses %d", h, m)
	}
	p := s.BlobPath(e.Fingerprint)
	fi, _ := os.Stat(p)
	utCorrupt(t, s, e.Fingerprint)
	if err := os.Chtimes(p, fi.ModTime(), fi.ModTime()); err != nil {
		t.Fatal(err)
	}
	utCheckIntegrityFailure(t, s, "task", "big")
}

func TestHotCacheHits(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotEntryMax: 1024})
	c := s.Counters()
	utPut(t, s, "instructions", "small", "hot value", store.PutOptions{})
	utMustGet(t, s, "instructions", "small", "hot value")
	if c.Hits.Load() != 0 || c.Misses.Load() != 1 {
		t.Fatalf("first read: hits %d misses %d", c.Hits.Load(), c.Misses.Load())
	}
	utMustGet(t, s, "instructions", "small", "hot value")
	if c.Hits.Load() != 1 || c.Misses.Load() != 1 {
		t.Fatalf("second read: hits %d misses %d", c.Hits.Load(), c.Misses.Load())
	}
	v, err := s.Open("instructions", "small")
	if err != nil {
		t.Fatal(err)
	}
	if b, inMem := v.Bytes(); !inMem || string(b) != "hot value" || v.File() != nil {
		t.Fatalf("hot value not served from memory: %q %v", b, inMem)
	}
	v.Close()
	// Another key with the same bytes shares the cached copy.
	utPut(t, s, "task", "twin", "hot value", store.PutOptions{})
	utMustGet(t, s, "task", "twin", "hot value")
	if c.Hits.Load() != 3 {
		t.Fatalf("same content under another key: hits %d", c.Hits.Load())
	}
	// Once hot, the value is served without the disk (and so survives a
	// damaged file: it was verified when it entered the cache).
	e, _ := s.Lookup("task", "twin")
	utCorrupt(t, s, e.Fingerprint)
	utMustGet(t, s, "task", "twin", "hot value")

	// Large values never enter the cache.
	big := strings.Repeat("B", 2048)
	utPut(t, s, "task", "big", big, store.PutOptions{})
	utMustGet(t, s, "task", "big", big)
	utMustGet(t, s, "task", "big", big)
	if c.Hits.Load() != 4 || c.Misses.Load() != 3 {
		t.Fatalf("after large reads: hits %d misses %d", c.Hits.Load(), c.Misses.Load())
	}
	st, _ := s.Stats()
	if st.HotEntries != 1 || st.HotBytes != int64(len("hot value")) {
		t.Fatalf("hot cache holds %d entries / %d bytes", st.HotEntries, st.HotBytes)
	}
}

func TestHotCacheBoundedByBytes(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotBytes: 100, HotEntryMax: 60})
	for _, k := range []string{"a", "b", "c"} {
		v := strings.Repeat(k, 40)
		utPut(t, s, "task", k, v, store.PutOptions{})
		utMustGet(t, s, "task", k, v)
	}
	st, _ := s.Stats()
	if st.HotBytes > 100 || st.HotEntries != 2 || st.HotBytes != 80 {
		t.Fatalf("hot cache over its bound: %d entries, %d bytes", st.HotEntries, st.HotBytes)
	}
	// "a" was evicted (least recently used): reading it is a miss.
	misses := s.Counters().Misses.Load()
	utMustGet(t, s, "task", "a", strings.Repeat("a", 40))
	if s.Counters().Misses.Load() != misses+1 {
		t.Fatal("evicted value served as a hit")
	}
	utMustGet(t, s, "task", "a", strings.Repeat("a", 40))
	if s.Counters().Misses.Load() != misses+1 {
		t.Fatal("re-cached value not served as a hit")
	}
}

// Get hands out a slice the caller may keep and change: a caller that
// scribbles over it must not change what the next reader gets.
func TestGetResultIsCallersOwn(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "pristine", store.PutOptions{})
	for i := 0; i < 3; i++ {
		b, _, err := s.Get("task", "k")
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != "pristine" {
			t.Fatalf("read %d returned %q: an earlier caller's changes leaked into the store", i, b)
		}
		for j := range b {
			b[j] = 'X'
		}
	}
}

func TestValueReadAt(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "0123456789", store.PutOptions{})
	v, err := s.Open("task", "k")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	buf := make([]byte, 4)
	if n, err := v.ReadAt(buf, 3); n != 4 || err != nil || string(buf) != "3456" {
		t.Fatalf("ReadAt(3) = %d %v %q", n, err, buf)
	}
	if n, err := v.ReadAt(buf, 8); n != 2 || err != io.EOF || string(buf[:2]) != "89" {
		t.Fatalf("ReadAt(8) = %d %v", n, err)
	}
	if n, err := v.ReadAt(buf, 10); n != 0 || err != io.EOF {
		t.Fatalf("ReadAt(10) = %d %v", n, err)
	}
	all, err := io.ReadAll(v.Reader())
	if err != nil || string(all) != "0123456789" {
		t.Fatalf("Reader: %q %v", all, err)
	}
}

func TestClosedStore(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "v", store.PutOptions{})
	w, _ := s.NewWriter("task", "pending", store.PutOptions{})
	w.Write([]byte("x"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	_, err := w.Commit()
	utMustFail(t, err, store.ErrClosed, "Commit after Close")
	_, err = s.Put("task", "k", strings.NewReader("v2"), store.PutOptions{})
	utMustFail(t, err, store.ErrClosed, "Put after Close")
	_, _, err = s.Get("task", "k")
	utMustFail(t, err, store.ErrClosed, "Get after Close")
	utMustFail(t, s.Delete("task", "k"), store.ErrClosed, "Delete after Close")
	_, err = s.Prune()
	utMustFail(t, err, store.ErrClosed, "Prune after Close")
	_, err = s.Stats()
	utMustFail(t, err, store.ErrClosed, "Stats after Close")
	_, err = s.Fsck(false)
	utMustFail(t, err, store.ErrClosed, "Fsck after Close")
	// The lock is released: the store opens again with its data.
	s2 := utOpenAt(t, s.Dir(), store.Options{Now: func() time.Time { return utT0 }})
	utMustGet(t, s2, "task", "k", "v")
}
