package store_test

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// utFsckFixture is a store with a few keys: "victim" is the one each case
// damages, the others must survive every repair.
func utFsckFixture(t *testing.T) (*store.Store, *utClock) {
	t.Helper()
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "victim", "the victim's value", store.PutOptions{})
	utPut(t, s, "task", "keep", "kept value", store.PutOptions{})
	utPut(t, s, "system", "keep", "kept value", store.PutOptions{}) // shares a blob
	utPut(t, s, "project", "never", "no expiry", store.PutOptions{})
	utPut(t, s, "artifacts", "other", "another value", store.PutOptions{TTL: time.Hour})
	return s, clk
}

// utReopenAfter closes s, runs damage on the closed store's directory, and
// opens it again.
func utReopenAfter(t *testing.T, s *store.Store, clk *utClock, damage func(dir string)) *store.Store {
	t.Helper()
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	damage(dir)
	return utOpenAt(t, dir, store.Options{Now: clk.Now})
}

// utEditIndex opens the closed store's index with the index package.
func utEditIndex(t *testing.T, dir string, fn func(tx *index.Tx) error) {
	t.Helper()
	db, err := index.Open(filepath.Join(dir, "index.db"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(fn); err != nil {
		t.Fatal(err)
	}
}

func TestFsckCleanStore(t *testing.T) {
	s, _ := utFsckFixture(t)
	rep := utFsckClean(t, s)
	if rep.Entries != 5 || rep.Blobs != 4 {
		t.Fatalf("checked %d entries / %d blobs, want 5 / 4", rep.Entries, rep.Blobs)
	}
	if len(rep.Repairs) != 0 {
		t.Fatalf("check-only fsck repaired: %v", rep.Repairs)
	}
	rep, err := s.Fsck(true)
	if err != nil || !rep.Clean() || len(rep.Repairs) != 0 {
		t.Fatalf("repair of a clean store: %+v %v", rep, err)
	}
	// An empty store is clean too.
	e, _ := utOpen(t, store.Options{})
	if rep := utFsckClean(t, e); rep.Entries != 0 || rep.Blobs != 0 {
		t.Fatalf("empty store: %+v", rep)
	}
}

func TestFsckDetectsAndRepairs(t *testing.T) {
	victimFP := utFP("the victim's value")
	cases := []struct {
		name        string
		damage      func(t *testing.T, s *store.Store, clk *utClock) *store.Store
		kinds       []string // problem kinds that must be reported
		victimGone  bool     // after repair the victim no longer reads
		quarantined int      // blobs moved to quarantine/
	}{
		{
			name: "missing blob",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				if err := os.Remove(s.BlobPath(victimFP)); err != nil {
					t.Fatal(err)
				}
				return s
			},
			kinds: []string{store.ProblemMissingBlob}, victimGone: true,
		},
		{
			name: "size mismatch",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				p := s.BlobPath(victimFP)
				os.Chmod(p, 0o644)
				if err := os.WriteFile(p, []byte("shorter"), 0o644); err != nil {
					t.Fatal(err)
				}
				return s
			},
			kinds: []string{store.ProblemSizeMismatch}, victimGone: true, quarantined: 1,
		},
		{
			name: "hash mismatch",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				utCorrupt(t, s, victimFP)
				return s
			},
			kinds: []string{store.ProblemHashMismatch}, victimGone: true, quarantined: 1,
		},
		{
			name: "orphan blob",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				p := s.BlobPath(utFP("orphan"))
				if err := os.WriteFile(p, []byte("orphan"), 0o444); err != nil {
					t.Fatal(err)
				}
				return s
			},
			kinds: []string{store.ProblemOrphanBlob},
		},
		{
			name: "stray tmp file",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				if err := os.WriteFile(filepath.Join(s.Dir(), "tmp", "0123.tmp"), []byte("half a value"), 0o600); err != nil {
					t.Fatal(err)
				}
				return s
			},
			kinds: []string{store.ProblemStrayFile},
		},
		{
			name: "stray file in blobs",
			damage: func(t *testing.T, s *store.Store, _ *utClock) *store.Store {
				if err := os.WriteFile(filepath.Join(s.Dir(), "blobs", "ab", "notes.txt"), []byte("x"), 0o600); err != nil {
					t.Fatal(err)
				}
				// A blob name filed under the wrong directory is not ours either.
				fp := utFP("misfiled")
				name := filepath.Base(s.BlobPath(fp))
				wrong := "00"
				if name[:2] == wrong {
					wrong = "01"
				}
				if err := os.WriteFile(filepath.Join(s.Dir(), "blobs", wrong, name), []byte("misfiled"), 0o444); err != nil {
					t.Fatal(err)
				}
				return s
			},
			kinds: []string{store.ProblemStrayFile},
		},
		{
			name: "usage drift",
			damage: func(t *testing.T, s *store.Store, clk *utClock) *store.Store {
				return utReopenAfter(t, s, clk, func(dir string) {
					utEditIndex(t, dir, func(tx *index.Tx) error {
						return tx.SetUsage("task", index.Usage{Bytes: 999999, Keys: 42})
					})
				})
			},
			kinds: []string{store.ProblemUsageDrift},
		},
		{
			name: "usage drift through bbolt",
			damage: func(t *testing.T, s *store.Store, clk *utClock) *store.Store {
				return utReopenAfter(t, s, clk, func(dir string) {
					db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					err = db.Update(func(tx *bolt.Tx) error {
						// 16 bytes: bytes then keys, big endian.
						return tx.Bucket([]byte("usage")).Put([]byte("system"), make([]byte, 16))
					})
					if err != nil {
						t.Fatal(err)
					}
				})
			},
			kinds: []string{store.ProblemUsageDrift},
		},
		{
			name: "refs drift",
			damage: func(t *testing.T, s *store.Store, clk *utClock) *store.Store {
				return utReopenAfter(t, s, clk, func(dir string) {
					utEditIndex(t, dir, func(tx *index.Tx) error { return tx.SetRefs(victimFP, 7) })
				})
			},
			kinds: []string{store.ProblemRefsDrift},
		},
		{
			name: "expiry drift",
			damage: func(t *testing.T, s *store.Store, clk *utClock) *store.Store {
				return utReopenAfter(t, s, clk, func(dir string) {
					utEditIndex(t, dir, func(tx *index.Tx) error { return tx.ClearExpiry() })
				})
			},
			kinds: []string{store.ProblemExpiryDrift},
		},
		{
			name: "corrupt record",
			damage: func(t *testing.T, s *store.Store, clk *utClock) *store.Store {
				return utReopenAfter(t, s, clk, func(dir string) {
					db, err := bolt.Open(filepath.Join(dir, "index.db"), 0o600, nil)
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					err = db.Update(func(tx *bolt.Tx) error {
						b := tx.Bucket([]byte("scopes")).Bucket([]byte("task"))
						return b.Put([]byte("victim"), []byte("\x01garbage that does not decode"))
					})
					if err != nil {
						t.Fatal(err)
					}
				})
			},
			// The record held the only reference to its blob, and its
			// share of the derived state.
			kinds:      []string{store.ProblemCorruptRecord, store.ProblemOrphanBlob, store.ProblemUsageDrift, store.ProblemRefsDrift, store.ProblemExpiryDrift},
			victimGone: true,
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s, clk := utFsckFixture(t)
			utFsckClean(t, s) // also lets the startup sweep finish
			s = c.damage(t, s, clk)

			rep, err := s.Fsck(false)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Clean() {
				t.Fatal("fsck did not notice")
			}
			var kinds []string
			for _, p := range rep.Problems {
				kinds = append(kinds, p.Kind)
				if p.String() == "" || p.Detail == "" {
					t.Errorf("problem without a description: %+v", p)
				}
			}
			for _, k := range c.kinds {
				if !slices.Contains(kinds, k) {
					t.Errorf("problem %s not reported; got %v", k, rep.Problems)
				}
			}
			for _, k := range kinds {
				if !slices.Contains(c.kinds, k) {
					t.Errorf("unexpected problem %s: %v", k, rep.Problems)
				}
			}
			if len(rep.Repairs) != 0 {
				t.Fatalf("check-only fsck repaired: %v", rep.Repairs)
			}
			// Checking again changes nothing.
			rep2, _ := s.Fsck(false)
			if len(rep2.Problems) != len(rep.Problems) {
				t.Fatalf("a check-only fsck changed the store: %v then %v", rep.Problems, rep2.Problems)
			}

			rep, err = s.Fsck(true)
			if err != nil {
				t.Fatal(err)
			}
			if len(rep.Repairs) == 0 {
				t.Fatalf("repair did nothing for %v", rep.Problems)
			}
			utFsckClean(t, s)

			q, _ := os.ReadDir(filepath.Join(s.Dir(), "quarantine"))
			if len(q) != c.quarantined {
				t.Errorf("%d files quarantined, want %d", len(q), c.quarantined)
			}
			utMustGet(t, s, "task", "keep", "kept value")
			utMustGet(t, s, "system", "keep", "kept value")
			utMustGet(t, s, "project", "never", "no expiry")
			utMustGet(t, s, "artifacts", "other", "another value")
			_, _, err = s.Get("task", "victim")
			if c.victimGone {
				utMustFail(t, err, store.ErrNotFound, "Get of the dropped entry")
			} else if err != nil {
				t.Fatalf("Get of the victim: %v", err)
			}
			// Usage matches what is left, and the store works normally.
			wantTask := int64(len("kept value"))
			if !c.victimGone {
				wantTask += int64(len("the victim's value"))
			}
			if u, _ := s.ScopeUsage("task"); u.Bytes != wantTask {
				t.Errorf("task usage after repair: %+v, want %d bytes", u, wantTask)
			}
			utPut(t, s, "task", "victim", "written again", store.PutOptions{})
			utMustGet(t, s, "task", "victim", "written again")
			clk.Add(2 * time.Hour)
			if res, err := s.Prune(); err != nil || res.Entries != 1 {
				t.Fatalf("Prune after repair: %+v %v", res, err)
			}
			utFsckClean(t, s)
		})
	}
}

func TestFsckUnknownScope(t *testing.T) {
	dir := t.TempDir()
	clk := utNewClock()
	s := utOpenAt(t, dir, store.Options{Now: clk.Now, Policy: utPolicy(t, "scopes: {extra: {quota: 1MB, ttl: 1h}}")})
	utPut(t, s, "extra", "k", "v", store.PutOptions{})
	s.Close()
	s = utOpenAt(t, dir, store.Options{Now: clk.Now})
	rep, err := s.Fsck(false)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Problems) != 1 || rep.Problems[0].Kind != store.ProblemUnknownScope || rep.Problems[0].Scope != "extra" {
		t.Fatalf("problems %v", rep.Problems)
	}
	if !strings.Contains(rep.Problems[0].String(), "extra") {
		t.Fatalf("problem text %q", rep.Problems[0])
	}
	// Its blob is referenced: not an orphan, and the startup sweep kept it.
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("blob of an unknown scope's entry: %v", files)
	}
	s.Close()
	s = utOpenAt(t, dir, store.Options{Now: clk.Now, Policy: utPolicy(t, "scopes: {extra: {quota: 1MB, ttl: 1h}}")})
	utMustGet(t, s, "extra", "k", "v")
}
