package store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

// utStamped makes a value that names the key it was written for and checks
// itself, so that a reader can tell a torn, mixed-up or foreign value.
func utStamped(key string, writer, seq int, rng *rand.Rand) string {
	body := fmt.Sprintf("key=%s;w=%d;n=%d;pad=%s;", key, writer, seq, strings.Repeat("p", rng.Intn(3000)))
	sum := sha256.Sum256([]byte(body))
	return body + "sum=" + hex.EncodeToString(sum[:8])
}

func utCheckStamped(key string, v []byte) error {
	s := string(v)
	i := strings.LastIndex(s, "sum=")
	if i < 0 {
		return fmt.Errorf("no checksum in %q", utShort(v))
	}
	sum := sha256.Sum256(v[:i])
	if s[i+4:] != hex.EncodeToString(sum[:8]) {
		return fmt.Errorf("checksum mismatch in %q", utShort(v))
	}
	if !strings.HasPrefix(s, "key="+key+";") {
		return fmt.Errorf("value for another key under %s: %q", key, utShort(v))
	}
	return nil
}

// TestConcurrentPutsGetsDeletes runs writers, readers, deleters and renames
// on shared keys, distinct keys and shared content at once. Readers must
// only ever see a whole value written for the key they read, or ErrNotFound;
// at the end fsck must be clean.
func TestConcurrentPutsGetsDeletes(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotEntryMax: 1024}) // some values hot, some from files
	const (
		writers   = 6
		puts      = 25
		readers   = 4
		sharedN   = 3
		dupN      = 4
		sharedDup = 3 // distinct contents the dup keys share
	)
	shared := func(i int) string { return fmt.Sprintf("shared-%d", i) }
	dupValue := func(i int) string { return fmt.Sprintf("dup-content-%d;%s", i, strings.Repeat("d", i*700)) }
	isDup := func(v []byte) bool {
		for i := 0; i < sharedDup; i++ {
			if string(v) == dupValue(i) {
				return true
			}
		}
		return false
	}

	var (
		wg       sync.WaitGroup
		done     atomic.Bool
		failures atomic.Int64
		reads    atomic.Int64
	)
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}

	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			own := fmt.Sprintf("own-%d", w)
			for n := 0; n < puts; n++ {
				// A distinct key: nobody else touches it, so it reads back
				// exactly what was just written.
				v := utStamped(own, w, n, rng)
				if _, err := s.Put("task", own, strings.NewReader(v), store.PutOptions{}); err != nil {
					fail("put %s: %v", own, err)
					return
				}
				got, _, err := s.Get("task", own)
				if err != nil || string(got) != v {
					fail("own key %s: read %q, %v after writing %q", own, utShort(got), err, utShort([]byte(v)))
				}
				// A shared key, through a Writer in two pieces.
				k := shared(rng.Intn(sharedN))
				v = utStamped(k, w, n, rng)
				wr, err := s.NewWriter("task", k, store.PutOptions{})
				if err != nil {
					fail("writer %s: %v", k, err)
					continue
				}
				half := len(v) / 2
				wr.Write([]byte(v[:half]))
				wr.Write([]byte(v[half:]))
				if _, err := wr.Commit(); err != nil {
					fail("commit %s: %v", k, err)
				}
				// Shared content under several keys (dedup), in another scope.
				d := fmt.Sprintf("dup-%d", rng.Intn(dupN))
				if _, err := s.Put("artifacts", d, strings.NewReader(dupValue(rng.Intn(sharedDup))), store.PutOptions{}); err != nil {
					fail("put %s: %v", d, err)
				}
				// Publish under a staging name, then rename onto a shared key.
				if n%5 == 0 {
					k := shared(rng.Intn(sharedN))
					stage := fmt.Sprintf("stage-%d", w)
					v := utStamped(k, w, n, rng)
					if _, err := s.Put("project", stage, strings.NewReader(v), store.PutOptions{}); err != nil {
						fail("put %s: %v", stage, err)
					} else if err := s.Rename("project", stage, k); err != nil {
						fail("rename %s -> %s: %v", stage, k, err)
					}
				}
			}
		}(w)
	}

	// Deleters remove shared keys and shared-content keys.
	var bg sync.WaitGroup
	for d := 0; d < 2; d++ {
		bg.Add(1)
		go func(d int) {
			defer bg.Done()
			rng := rand.New(rand.NewSource(int64(100 + d)))
			for !done.Load() {
				var err error
				switch rng.Intn(3) {
				case 0:
					err = s.Delete("task", shared(rng.Intn(sharedN)))
				case 1:
					err = s.Delete("artifacts", fmt.Sprintf("dup-%d", rng.Intn(dupN)))
				case 2:
					err = s.Delete("project", shared(rng.Intn(sharedN)))
				}
				if err != nil && !errors.Is(err, store.ErrNotFound) {
					fail("delete: %v", err)
				}
			}
		}(d)
	}
	// Readers check everything they see.
	for r := 0; r < readers; r++ {
		bg.Add(1)
		go func(r int) {
			defer bg.Done()
			rng := rand.New(rand.NewSource(int64(200 + r)))
			for !done.Load() {
				var scope, key string
				switch rng.Intn(4) {
				case 0:
					scope, key = "task", shared(rng.Intn(sharedN))
				case 1:
					scope, key = "project", shared(rng.Intn(sharedN))
				case 2:
					scope, key = "artifacts", fmt.Sprintf("dup-%d", rng.Intn(dupN))
				case 3:
					scope, key = "task", fmt.Sprintf("own-%d", rng.Intn(writers))
				}
				got, e, err := s.Get(scope, key)
				reads.Add(1)
				if errors.Is(err, store.ErrNotFound) {
					continue
				}
				if err != nil {
					fail("get %s/%s: %v", scope, key, err)
					continue
				}
				if e.Size != int64(len(got)) || e.Fingerprint != sha256.Sum256(got) {
					fail("get %s/%s: entry does not describe the bytes", scope, key)
				}
				if scope == "artifacts" {
					if !isDup(got) {
						fail("get %s/%s: foreign value %q", scope, key, utShort(got))
					}
				} else if err := utCheckStamped(key, got); err != nil {
					fail("get %s/%s: %v", scope, key, err)
				}
				if rng.Intn(8) == 0 {
					if _, err := s.List(scope); err != nil {
						fail("list %s: %v", scope, err)
					}
				}
			}
		}(r)
	}

	wg.Wait()
	done.Store(true)
	bg.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d failures in %d reads", failures.Load(), reads.Load())
	}
	if n := s.Counters().VerifyFailures.Load(); n != 0 {
		t.Fatalf("%d verification failures in a store nobody damaged", n)
	}
	rep := utFsckClean(t, s)
	// The derived state matches what is left.
	for _, scope := range []string{"task", "project", "artifacts"} {
		es, err := s.List(scope)
		if err != nil {
			t.Fatal(err)
		}
		var bytes int64
		for _, e := range es {
			bytes += e.Size
		}
		if u, _ := s.ScopeUsage(scope); u.Bytes != bytes || u.Keys != int64(len(es)) {
			t.Fatalf("%s usage %+v, entries hold %d keys / %d bytes", scope, u, len(es), bytes)
		}
	}
	if len(utBlobFiles(t, s)) != rep.Blobs {
		t.Fatalf("%d blob files for %d distinct values", len(utBlobFiles(t, s)), rep.Blobs)
	}
	t.Logf("%d reads, %d entries, %d blobs", reads.Load(), rep.Entries, rep.Blobs)
}

// TestConcurrentSameContent hammers one blob from many keys at once: puts
// and deletes of identical content must never remove a blob still in use.
func TestConcurrentSameContent(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotEntryMax: 16}) // every read goes to the file
	const v = "identical content shared by every key"
	var wg sync.WaitGroup
	var failures atomic.Int64
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			k := fmt.Sprintf("k%d", g)
			for i := 0; i < 15; i++ {
				if _, err := s.Put("task", k, strings.NewReader(v), store.PutOptions{}); err != nil {
					failures.Add(1)
					t.Errorf("put: %v", err)
					return
				}
				got, _, err := s.Get("task", k)
				if err != nil || !bytes.Equal(got, []byte(v)) {
					failures.Add(1)
					t.Errorf("get %s right after put: %q %v", k, got, err)
				}
				if err := s.Delete("task", k); err != nil {
					failures.Add(1)
					t.Errorf("delete: %v", err)
				}
			}
		}(g)
	}
	wg.Wait()
	if failures.Load() > 0 {
		t.FailNow()
	}
	utFsckClean(t, s)
	if files := utBlobFiles(t, s); len(files) != 0 {
		t.Fatalf("blob files left after every key was deleted: %v", files)
	}
}
