package store_test

// Helpers of the store's unit tests. Their names start with "ut" so that
// they cannot collide with helpers of other test files in this package.

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// utT0 is the injected clock's starting instant.
var utT0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// utClock is a settable clock safe for concurrent use.
type utClock struct {
	mu  sync.Mutex
	now time.Time
}

func utNewClock() *utClock { return &utClock{now: utT0} }

func (c *utClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *utClock) Set(t time.Time) {
	c.mu.Lock()
	c.now = t
	c.mu.Unlock()
}

func (c *utClock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// utPolicy parses a config document or fails the test.
func utPolicy(t testing.TB, doc string) *quota.Policy {
	t.Helper()
	p, err := quota.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("policy %q: %v", doc, err)
	}
	return p
}

// utOpenAt opens the store in dir, closing it when the test ends.
func utOpenAt(t testing.TB, dir string, opts store.Options) *store.Store {
	t.Helper()
	s, err := store.Open(dir, opts)
	if err != nil {
		t.Fatalf("Open %s: %v", dir, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// utOpen opens a fresh store with an injected clock.
func utOpen(t testing.TB, opts store.Options) (*store.Store, *utClock) {
	t.Helper()
	clk := utNewClock()
	if opts.Now == nil {
		opts.Now = clk.Now
	}
	return utOpenAt(t, t.TempDir(), opts), clk
}

func utPut(t testing.TB, s *store.Store, scope, key, value string, opts store.PutOptions) index.Entry {
	t.Helper()
	e, err := s.Put(scope, key, strings.NewReader(value), opts)
	if err != nil {
		t.Fatalf("Put %s/%s: %v", scope, key, err)
	}
	return e
}

// utMustGet reads scope/key and checks its bytes.
func utMustGet(t testing.TB, s *store.Store, scope, key, want string) index.Entry {
	t.Helper()
	got, e, err := s.Get(scope, key)
	if err != nil {
		t.Fatalf("Get %s/%s: %v", scope, key, err)
	}
	if string(got) != want {
		t.Fatalf("Get %s/%s = %q, want %q", scope, key, utShort(got), utShort([]byte(want)))
	}
	if e.Size != int64(len(want)) || e.Fingerprint != sha256.Sum256([]byte(want)) {
		t.Fatalf("Get %s/%s: entry size %d fingerprint %x do not match the value", scope, key, e.Size, e.Fingerprint[:4])
	}
	return e
}

// utMustFail checks that err is (wraps) want.
func utMustFail(t testing.TB, err, want error, what string) {
	t.Helper()
	if err == nil {
		t.Fatalf("%s: succeeded, want %v", what, want)
	}
	if !errors.Is(err, want) {
		t.Fatalf("%s: error %v, want %v", what, err, want)
	}
}

func utShort(b []byte) string {
	if len(b) > 64 {
		return string(b[:64]) + "…"
	}
	return string(b)
}

// utBlobFiles lists the files under blobs/, relative to the store.
func utBlobFiles(t testing.TB, s *store.Store) []string {
	t.Helper()
	var out []string
	root := filepath.Join(s.Dir(), "blobs")
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if !fi.IsDir() {
			rel, _ := filepath.Rel(s.Dir(), p)
			out = append(out, rel)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

// utTmpFiles lists the files in tmp/.
func utTmpFiles(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(filepath.Join(dir, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func utFP(v string) index.Fingerprint { return sha256.Sum256([]byte(v)) }

// utCorrupt overwrites the blob of fp in place with bytes of the same
// length (the file is 0444, so it is made writable first).
func utCorrupt(t testing.TB, s *store.Store, fp index.Fingerprint) {
	t.Helper()
	p := s.BlobPath(fp)
	old, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	bad := bytes.Clone(old)
	for i := range bad {
		bad[i] ^= 0x5a
	}
	if len(bad) == 0 {
		bad = []byte("x")
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(bad, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// utFsckClean runs a check-only fsck and fails the test unless it is clean.
func utFsckClean(t testing.TB, s *store.Store) *store.FsckReport {
	t.Helper()
	rep, err := s.Fsck(false)
	if err != nil {
		t.Fatalf("Fsck: %v", err)
	}
	if !rep.Clean() {
		t.Fatalf("Fsck found problems: %v", rep.Problems)
	}
	return rep
}
