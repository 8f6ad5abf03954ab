package index_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// journalModel is what the index must hold: every acknowledged change.
type journalModel map[string]map[string]index.Entry

func (m journalModel) check(t *testing.T, db *index.DB, when string) {
	t.Helper()
	err := db.View(func(tx *index.Tx) error {
		for _, s := range testScopes {
			var keys []string
			if err := tx.ForEach(s, func(e *index.Entry) error {
				keys = append(keys, e.Key)
				want, ok := m[s][e.Key]
				if !ok {
					t.Errorf("%s: %s/%s is listed, but was deleted or never put", when, s, e.Key)
				} else if e.Fingerprint != want.Fingerprint || !e.ExpiresAt.Equal(want.ExpiresAt) {
					t.Errorf("%s: %s/%s lists another value", when, s, e.Key)
				}
				return nil
			}); err != nil {
				return err
			}
			if !slices.IsSorted(keys) {
				t.Errorf("%s: %s lists out of order", when, s)
			}
			if len(keys) != len(m[s]) {
				t.Errorf("%s: %s lists %d keys, want %d", when, s, len(keys), len(m[s]))
			}
			for k, want := range m[s] {
				e, found, err := tx.Get(s, k)
				if err != nil || !found || e.Fingerprint != want.Fingerprint {
					t.Errorf("%s: Get %s/%s: found %v, err %v", when, s, k, found, err)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, db)
}

// TestJournalReplaysAfterCrash: commits made through the journal (Batch)
// are visible at once, survive a crash that leaves them only in the
// journal, and come back in order with their attachments; checkpoints
// taken along the way (a small CheckpointChanges) lose nothing.
func TestJournalReplaysAfterCrash(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	var replayed [][]byte
	var syncs atomic.Int64
	opts := index.Options{
		Replay:            func(a [][]byte) error { replayed = append(replayed, a...); return nil },
		Sync:              func() error { syncs.Add(1); return nil },
		CheckpointChanges: 40,
	}
	open := func() *index.DB {
		t.Helper()
		db, err := index.OpenWith(path, testScopes, opts)
		if err != nil {
			t.Fatalf("OpenWith: %v", err)
		}
		return db
	}
	db := open()
	model := journalModel{}
	for _, s := range testScopes {
		model[s] = map[string]index.Entry{}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var attached [][]byte // since the last checkpoint
	for round := 0; round < 6; round++ {
		for i := 0; i < 50+rng.IntN(50); i++ {
			s := testScopes[rng.IntN(len(testScopes))]
			key := fmt.Sprintf("k%02d", rng.IntN(30))
			var exp time.Time
			if rng.IntN(3) == 0 {
				exp = t0.Add(time.Duration(rng.IntN(100)) * time.Hour)
			}
			// Shared values: refs above 1.
			e := entry(s, key, fmt.Sprintf("v%d", rng.IntN(20)), exp)
			att := []byte(fmt.Sprintf("attach %d %d", round, i))
			del := rng.IntN(4) == 0
			err := db.Batch(func(tx *index.Tx) error {
				if del {
					_, _, err := tx.Delete(s, key)
					return err
				}
				tx.Attach(att)
				_, _, err := tx.Put(e)
				return err
			})
			if err != nil {
				t.Fatalf("Batch: %v", err)
			}
			if del {
				delete(model[s], key)
			} else {
				model[s][key] = e
				attached = append(attached, att)
			}
		}
		model.check(t, db, fmt.Sprintf("round %d, before the crash", round))
		if db.Checkpoints.Load() == 0 {
			t.Fatal("no checkpoint was taken")
		}
		if err := db.CrashForTest(); err != nil {
			t.Fatal(err)
		}
		replayed = nil
		syncsBeforeOpen := syncs.Load()
		db = open()
		model.check(t, db, fmt.Sprintf("round %d, after the crash", round))
		if len(replayed) > 0 && syncs.Load() == syncsBeforeOpen {
			t.Errorf("round %d: the replay emptied the journal of %d attachments without Sync", round, len(replayed))
		}
		// Checkpoints run in the background too: what the journal held
		// at the crash is the attachments since the last one, in order.
		if len(replayed) > len(attached) || !slices.EqualFunc(replayed, attached[len(attached)-len(replayed):], bytes.Equal) {
			t.Errorf("round %d: replayed %d attachments, not the last ones of the %d made, in order", round, len(replayed), len(attached))
		}
		if len(replayed) == len(attached) {
			t.Errorf("round %d: all %d attachments replayed: no checkpoint in %d commits", round, len(attached), len(attached))
		}
		attached = attached[:0]
	}
	last := entry("task", "last", "last value", time.Time{})
	if err := db.Batch(func(tx *index.Tx) error { tx.Attach([]byte("last")); _, _, err := tx.Put(last); return err }); err != nil {
		t.Fatal(err)
	}
	model["task"]["last"] = last
	db.WaitForTest()
	syncsBefore := syncs.Load()
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if syncs.Load() == syncsBefore {
		t.Error("Close checkpointed without Sync")
	}
	replayed = nil
	db = open()
	defer db.Close()
	if len(replayed) != 0 {
		t.Errorf("after a clean close, %d attachments replayed", len(replayed))
	}
	model.check(t, db, "after a clean close")
}

// TestJournalTornRecord: a record cut short by a crash (its CRC fails) and
// everything after it are not replayed; the records before it are.
func TestJournalTornRecord(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.OpenWith(path, testScopes, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		e := entry("task", fmt.Sprintf("k%d", i), fmt.Sprintf("v%d", i), time.Time{})
		if err := db.Batch(func(tx *index.Tx) error { _, _, err := tx.Put(e); return err }); err != nil {
			t.Fatal(err)
		}
	}
	if err := db.CrashForTest(); err != nil {
		t.Fatal(err)
	}
	// Flip a byte near the end of the third record's body: records are
	// written one after the other from 4096.
	jf, err := os.OpenFile(index.JournalPathForTest(path), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64<<10)
	if _, err := jf.ReadAt(buf, 4096); err != nil {
		t.Fatal(err)
	}
	end := len(bytes.TrimRight(buf, "\x00"))
	buf[end-1] ^= 0xff
	if _, err := jf.WriteAt(buf[end-1:end], int64(4096+end-1)); err != nil {
		t.Fatal(err)
	}
	jf.Close()
	db, err = index.OpenWith(path, testScopes, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.View(func(tx *index.Tx) error {
		for i, want := range []bool{true, true, false} {
			if _, found, _ := tx.Get("task", fmt.Sprintf("k%d", i)); found != want {
				t.Errorf("k%d: found %v, want %v", i, found, want)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	checkConsistent(t, db)
}

// TestJournalOfAnotherIndexIgnored: a journal left beside an index it
// does not belong to (the index was rebuilt or restored from a copy) is
// not replayed into it.
func TestJournalOfAnotherIndexIgnored(t *testing.T) {
	dir := t.TempDir()
	a := filepath.Join(dir, "a.db")
	db, err := index.OpenWith(a, testScopes, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	e := entry("task", "k", "v", time.Time{})
	if err := db.Batch(func(tx *index.Tx) error { _, _, err := tx.Put(e); return err }); err != nil {
		t.Fatal(err)
	}
	if err := db.CrashForTest(); err != nil {
		t.Fatal(err)
	}
	// A new index takes a's place; a's journal stays.
	if err := os.Remove(a); err != nil {
		t.Fatal(err)
	}
	db, err = index.OpenWith(a, testScopes, index.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	_ = db.View(func(tx *index.Tx) error {
		if _, found, _ := tx.Get("task", "k"); found {
			t.Error("the old index's journal was replayed into the new one")
		}
		return nil
	})
}

// TestJournalReadersSeeWholeCommits: while writers commit through the
// journal and checkpoints move the overlay into bbolt, every read
// transaction sees one state: the entries it lists add up to the usage it
// reads, key for key.
func TestJournalReadersSeeWholeCommits(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.OpenWith(path, testScopes, index.Options{CheckpointChanges: 24})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	stop := make(chan struct{})
	var writers, readers sync.WaitGroup
	for w := 0; w < 4; w++ {
		writers.Add(1)
		go func() {
			defer writers.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for i := 0; i < 300; i++ {
				key := fmt.Sprintf("w%d-%02d", w, rng.IntN(20))
				e := entry("task", key, fmt.Sprintf("%d-%d-%s", w, i, strings.Repeat("x", rng.IntN(50))), time.Time{})
				err := db.Batch(func(tx *index.Tx) error {
					if rng.IntN(3) == 0 {
						_, _, err := tx.Delete("task", key)
						return err
					}
					_, _, err := tx.Put(e)
					return err
				})
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	var views atomic.Int64
	for r := 0; r < 2; r++ {
		readers.Add(1)
		go func() {
			defer readers.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				err := db.View(func(tx *index.Tx) error {
					var sum index.Usage
					if err := tx.ForEach("task", func(e *index.Entry) error {
						sum.Bytes += e.Size
						sum.Keys++
						if _, found, _ := tx.Get("task", e.Key); !found {
							t.Errorf("%s listed but not found in the same transaction", e.Key)
						}
						return nil
					}); err != nil {
						return err
					}
					if u := tx.Usage("task"); u != sum {
						t.Errorf("one transaction: usage %+v, entries add up to %+v", u, sum)
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
				views.Add(1)
			}
		}()
	}
	writers.Wait()
	close(stop)
	readers.Wait()
	if db.Checkpoints.Load() < 10 {
		t.Errorf("only %d checkpoints: the test did not race them", db.Checkpoints.Load())
	}
	t.Logf("%d views, %d journal commits, %d checkpoints", views.Load(), db.JournalCommits.Load(), db.Checkpoints.Load())
	checkConsistent(t, db)
}

// TestJournalHalfFullCheckpoints: large attachments fill the journal long
// before the overlay fills; once half the journal is used a checkpoint runs
// in the background, so that no writer has to wait for one taken because
// the journal is full.
func TestJournalHalfFullCheckpoints(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	var syncs atomic.Int64
	db, err := index.OpenWith(path, testScopes, index.Options{
		Sync:              func() error { syncs.Add(1); return nil },
		CheckpointChanges: 1 << 20, // never the reason here
	})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	value := bytes.Repeat([]byte("v"), index.JournalMaxAttach)
	// 9 records of 256 KiB: past half of the 4 MiB journal, far from full.
	for i := 0; i < 9; i++ {
		e := entry("artifacts", fmt.Sprintf("big%d", i), fmt.Sprint(i), time.Time{})
		if err := db.Batch(func(tx *index.Tx) error { tx.Attach(value); _, _, err := tx.Put(e); return err }); err != nil {
			t.Fatal(err)
		}
	}
	db.WaitForTest()
	if n := db.Checkpoints.Load(); n != 1 {
		t.Errorf("%d checkpoints after 2.25 MiB of attachments, want 1 (in the background)", n)
	}
	if syncs.Load() < 2 {
		t.Errorf("the background checkpoint synced %d times, want the sync before the lock and the one in it", syncs.Load())
	}
}
