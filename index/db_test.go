package index_test

import (
	"crypto/sha256"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/iriskvfs/iriskvfs/index"
)

var testScopes = []string{"system", "task", "artifacts"}

func openDB(t *testing.T) *index.DB {
	t.Helper()
	db, err := index.Open(filepath.Join(t.TempDir(), "index.db"), testScopes)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func fpOf(s string) index.Fingerprint { return sha256.Sum256([]byte(s)) }

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

func entry(scope, key, content string, expires time.Time) index.Entry {
	return index.Entry{
		Scope: scope, Key: key, Size: int64(len(content)), Fingerprint: fpOf(content),
		CreatedAt: t0, ModTime: t0, ExpiresAt: expires, Mode: 0o644,
	}
}

func mustUpdate(t *testing.T, db *index.DB, fn func(*index.Tx) error) {
	t.Helper()
	if err := db.Update(fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// state is everything the derived buckets say.
type state struct {
	usage  map[string]index.Usage
	refs   map[index.Fingerprint]uint64
	expiry int
}

func readState(t *testing.T, db *index.DB) state {
	t.Helper()
	st := state{usage: map[string]index.Usage{}, refs: map[index.Fingerprint]uint64{}}
	err := db.View(func(tx *index.Tx) error {
		for _, s := range testScopes {
			st.usage[s] = tx.Usage(s)
		}
		st.expiry = tx.ExpiryIndexSize()
		return tx.ForEachRef(func(fp index.Fingerprint, n uint64) error {
			st.refs[fp] = n
			return nil
		})
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// recompute derives the same state from the entries themselves.
func recompute(t *testing.T, db *index.DB) state {
	t.Helper()
	st := state{usage: map[string]index.Usage{}, refs: map[index.Fingerprint]uint64{}}
	err := db.View(func(tx *index.Tx) error {
		for _, s := range testScopes {
			var u index.Usage
			if err := tx.ForEach(s, func(e *index.Entry) error {
				u.Bytes += e.Size
				u.Keys++
				st.refs[e.Fingerprint]++
				if !e.ExpiresAt.IsZero() {
					st.expiry++
				}
				return nil
			}); err != nil {
				return err
			}
			st.usage[s] = u
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func checkConsistent(t *testing.T, db *index.DB) state {
	t.Helper()
	got, want := readState(t, db), recompute(t, db)
	for _, s := range testScopes {
		if got.usage[s] != want.usage[s] {
			t.Errorf("usage of %s: stored %+v, entries hold %+v", s, got.usage[s], want.usage[s])
		}
	}
	if len(got.refs) != len(want.refs) {
		t.Errorf("refs: stored %d fingerprints, entries use %d", len(got.refs), len(want.refs))
	}
	for fp, n := range want.refs {
		if got.refs[fp] != n {
			t.Errorf("refs of %x: stored %d, entries %d", fp[:4], got.refs[fp], n)
		}
	}
	if got.expiry != want.expiry {
		t.Errorf("expiry index holds %d, entries need %d", got.expiry, want.expiry)
	}
	return got
}

func TestDBPutGetReplaceDelete(t *testing.T) {
	db := openDB(t)
	e1 := entry("task", "a", "hello", t0.Add(time.Hour))
	e1.Meta = map[string]string{"x": "y"}
	mustUpdate(t, db, func(tx *index.Tx) error {
		old, replaced, err := tx.Put(e1)
		if err != nil {
			return err
		}
		if replaced || old.Key != "" {
			t.Errorf("first put reported a replacement: %+v", old)
		}
		return nil
	})
	st := checkConsistent(t, db)
	if st.usage["task"] != (index.Usage{Bytes: 5, Keys: 1}) {
		t.Fatalf("usage after put: %+v", st.usage["task"])
	}
	if st.refs[fpOf("hello")] != 1 || st.expiry != 1 {
		t.Fatalf("refs/expiry after put: %v %d", st.refs, st.expiry)
	}

	db.View(func(tx *index.Tx) error {
		got, ok, err := tx.Get("task", "a")
		if err != nil || !ok {
			t.Fatalf("Get: %v %v", ok, err)
		}
		if !entriesEqual(&got, &e1) {
			t.Fatalf("Get returned %+v, want %+v", got, e1)
		}
		if _, ok, err := tx.Get("task", "missing"); ok || err != nil {
			t.Fatalf("Get of a missing key: %v %v", ok, err)
		}
		if _, _, err := tx.Get("nosuchscope", "a"); err == nil {
			t.Fatal("Get in an unknown scope succeeded")
		}
		return nil
	})

	// Replace with a bigger value and a different expiry.
	e2 := entry("task", "a", "hello, world", t0.Add(2*time.Hour))
	mustUpdate(t, db, func(tx *index.Tx) error {
		old, replaced, err := tx.Put(e2)
		if err != nil {
			return err
		}
		if !replaced || old.Size != 5 || old.Fingerprint != fpOf("hello") {
			t.Errorf("replace returned %+v %v", old, replaced)
		}
		return nil
	})
	st = checkConsistent(t, db)
	if st.usage["task"] != (index.Usage{Bytes: 12, Keys: 1}) {
		t.Fatalf("usage after replace: %+v", st.usage["task"])
	}
	if _, ok := st.refs[fpOf("hello")]; ok {
		t.Fatal("the replaced value still has a reference count")
	}
	if st.refs[fpOf("hello, world")] != 1 || st.expiry != 1 {
		t.Fatalf("refs/expiry after replace: %v %d", st.refs, st.expiry)
	}
	// The old expiry is gone from the index, the new one is there.
	db.View(func(tx *index.Tx) error {
		var got []string
		tx.Expired(t0.Add(time.Hour+time.Minute), func(s, k string) error { got = append(got, s+"/"+k); return nil })
		if len(got) != 0 {
			t.Errorf("stale expiry of the replaced value: %v", got)
		}
		tx.Expired(t0.Add(2*time.Hour), func(s, k string) error { got = append(got, s+"/"+k); return nil })
		if !slices.Equal(got, []string{"task/a"}) {
			t.Errorf("new expiry not indexed: %v", got)
		}
		return nil
	})

	mustUpdate(t, db, func(tx *index.Tx) error {
		old, ok, err := tx.Delete("task", "a")
		if err != nil || !ok || old.Size != 12 {
			t.Errorf("Delete: %+v %v %v", old, ok, err)
		}
		_, ok, err = tx.Delete("task", "a")
		if err != nil || ok {
			t.Errorf("second Delete: %v %v", ok, err)
		}
		return nil
	})
	st = checkConsistent(t, db)
	if st.usage["task"] != (index.Usage{}) || len(st.refs) != 0 || st.expiry != 0 {
		t.Fatalf("state after delete: %+v", st)
	}
}

func TestDBSharedFingerprintRefs(t *testing.T) {
	db := openDB(t)
	mustUpdate(t, db, func(tx *index.Tx) error {
		for _, e := range []index.Entry{
			entry("task", "a", "same", time.Time{}),
			entry("task", "b", "same", t0.Add(time.Hour)),
			entry("artifacts", "c", "same", time.Time{}),
			entry("artifacts", "d", "other", time.Time{}),
		} {
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
		}
		return nil
	})
	st := checkConsistent(t, db)
	if st.refs[fpOf("same")] != 3 || st.refs[fpOf("other")] != 1 {
		t.Fatalf("refs: %v", st.refs)
	}
	if st.usage["task"] != (index.Usage{Bytes: 8, Keys: 2}) || st.usage["artifacts"] != (index.Usage{Bytes: 9, Keys: 2}) {
		t.Fatalf("usage: %+v", st.usage)
	}
	if st.expiry != 1 {
		t.Fatalf("expiry index: %d", st.expiry)
	}
	mustUpdate(t, db, func(tx *index.Tx) error {
		_, _, err := tx.Delete("task", "b")
		if n := tx.Refs(fpOf("same")); n != 2 {
			t.Errorf("refs after one delete: %d", n)
		}
		return err
	})
	mustUpdate(t, db, func(tx *index.Tx) error {
		// Replacing a with the same value keeps the count.
		if _, _, err := tx.Put(entry("task", "a", "same", time.Time{})); err != nil {
			return err
		}
		if n := tx.Refs(fpOf("same")); n != 2 {
			t.Errorf("refs after same-value replace: %d", n)
		}
		return nil
	})
	checkConsistent(t, db)
}

func TestDBSetMeta(t *testing.T) {
	db := openDB(t)
	e := entry("system", "k", "value", t0.Add(time.Hour))
	mustUpdate(t, db, func(tx *index.Tx) error { _, _, err := tx.Put(e); return err })
	before := checkConsistent(t, db)

	// Move the expiry later, add meta.
	e.ExpiresAt = t0.Add(5 * time.Hour)
	e.Meta = map[string]string{"m": "1"}
	e.ContentType = "text/plain"
	mustUpdate(t, db, func(tx *index.Tx) error { return tx.SetMeta(e) })
	after := checkConsistent(t, db)
	if after.usage["system"] != before.usage["system"] || after.expiry != 1 {
		t.Fatalf("SetMeta changed usage or expiry count: %+v -> %+v", before, after)
	}
	db.View(func(tx *index.Tx) error {
		got, _, _ := tx.Get("system", "k")
		if got.Meta["m"] != "1" || got.ContentType != "text/plain" || !got.ExpiresAt.Equal(t0.Add(5*time.Hour)) {
			t.Errorf("SetMeta not stored: %+v", got)
		}
		n := 0
		tx.Expired(t0.Add(4*time.Hour), func(string, string) error { n++; return nil })
		if n != 0 {
			t.Error("old expiry still indexed after SetMeta")
		}
		tx.Expired(t0.Add(5*time.Hour), func(string, string) error { n++; return nil })
		if n != 1 {
			t.Error("new expiry not indexed after SetMeta")
		}
		return nil
	})

	// Never expire.
	e.ExpiresAt = time.Time{}
	mustUpdate(t, db, func(tx *index.Tx) error { return tx.SetMeta(e) })
	if st := checkConsistent(t, db); st.expiry != 0 {
		t.Fatalf("expiry index after clearing expiry: %d", st.expiry)
	}
	// And back.
	e.ExpiresAt = t0.Add(time.Minute)
	mustUpdate(t, db, func(tx *index.Tx) error { return tx.SetMeta(e) })
	if st := checkConsistent(t, db); st.expiry != 1 {
		t.Fatalf("expiry index after setting expiry: %d", st.expiry)
	}

	// SetMeta refuses to change the value or to create an entry.
	for name, bad := range map[string]index.Entry{
		"size":        func() index.Entry { x := e; x.Size++; return x }(),
		"fingerprint": func() index.Entry { x := e; x.Fingerprint = fpOf("other"); return x }(),
		"missing":     func() index.Entry { x := e; x.Key = "nope"; return x }(),
	} {
		err := db.Update(func(tx *index.Tx) error { return tx.SetMeta(bad) })
		if err == nil {
			t.Errorf("SetMeta changing %s succeeded", name)
		}
	}
	checkConsistent(t, db)
}

func TestDBExpiredOrderAndBoundary(t *testing.T) {
	db := openDB(t)
	// Inserted out of order, across scopes.
	puts := []index.Entry{
		entry("task", "late", "1", t0.Add(3*time.Hour)),
		entry("system", "early", "2", t0.Add(1*time.Hour)),
		entry("artifacts", "mid", "3", t0.Add(2*time.Hour)),
		entry("task", "never", "4", time.Time{}),
		entry("task", "exact", "5", t0.Add(2*time.Hour+time.Nanosecond)),
	}
	mustUpdate(t, db, func(tx *index.Tx) error {
		for _, e := range puts {
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
		}
		return nil
	})
	expired := func(now time.Time) []string {
		var out []string
		db.View(func(tx *index.Tx) error {
			return tx.Expired(now, func(s, k string) error { out = append(out, s+"/"+k); return nil })
		})
		return out
	}
	if got := expired(t0.Add(time.Hour - time.Nanosecond)); len(got) != 0 {
		t.Fatalf("expired before anything is due: %v", got)
	}
	if got := expired(t0.Add(time.Hour)); !slices.Equal(got, []string{"system/early"}) {
		t.Fatalf("at the first expiry: %v", got)
	}
	if got := expired(t0.Add(2 * time.Hour)); !slices.Equal(got, []string{"system/early", "artifacts/mid"}) {
		t.Fatalf("at 2h: %v", got)
	}
	want := []string{"system/early", "artifacts/mid", "task/exact", "task/late"}
	if got := expired(t0.Add(100 * time.Hour)); !slices.Equal(got, want) {
		t.Fatalf("all: %v, want %v", got, want)
	}
	// fn may delete what it is given; state stays consistent.
	mustUpdate(t, db, func(tx *index.Tx) error {
		return tx.Expired(t0.Add(2*time.Hour), func(s, k string) error {
			_, _, err := tx.Delete(s, k)
			return err
		})
	})
	st := checkConsistent(t, db)
	if st.expiry != 2 || st.usage["system"].Keys != 0 || st.usage["artifacts"].Keys != 0 || st.usage["task"].Keys != 3 {
		t.Fatalf("after deleting expired: %+v", st)
	}
	// An error from fn stops the walk and is returned.
	stop := errors.New("stop")
	calls := 0
	err := db.View(func(tx *index.Tx) error {
		return tx.Expired(t0.Add(100*time.Hour), func(string, string) error { calls++; return stop })
	})
	if !errors.Is(err, stop) || calls != 1 {
		t.Fatalf("Expired with a failing fn: %v after %d calls", err, calls)
	}
}

func TestDBRebuildHelpers(t *testing.T) {
	db := openDB(t)
	mustUpdate(t, db, func(tx *index.Tx) error {
		for i, k := range []string{"a", "b", "c"} {
			if _, _, err := tx.Put(entry("task", k, k, t0.Add(time.Duration(i+1)*time.Hour))); err != nil {
				return err
			}
		}
		return nil
	})
	mustUpdate(t, db, func(tx *index.Tx) error {
		if err := tx.ClearExpiry(); err != nil {
			return err
		}
		if err := tx.ClearRefs(); err != nil {
			return err
		}
		if err := tx.SetUsage("task", index.Usage{Bytes: 999, Keys: 7}); err != nil {
			return err
		}
		return nil
	})
	st := readState(t, db)
	if st.expiry != 0 || len(st.refs) != 0 || st.usage["task"] != (index.Usage{Bytes: 999, Keys: 7}) {
		t.Fatalf("after clearing: %+v", st)
	}
	// Rebuild the way fsck does.
	mustUpdate(t, db, func(tx *index.Tx) error {
		var u index.Usage
		if err := tx.ForEach("task", func(e *index.Entry) error {
			u.Bytes += e.Size
			u.Keys++
			if err := tx.SetRefs(e.Fingerprint, tx.Refs(e.Fingerprint)+1); err != nil {
				return err
			}
			return tx.IndexExpiry(e)
		}); err != nil {
			return err
		}
		return tx.SetUsage("task", u)
	})
	st = checkConsistent(t, db)
	if st.expiry != 3 || st.usage["task"] != (index.Usage{Bytes: 3, Keys: 3}) {
		t.Fatalf("after rebuild: %+v", st)
	}
	mustUpdate(t, db, func(tx *index.Tx) error {
		if err := tx.SetRefs(fpOf("a"), 0); err != nil {
			return err
		}
		if tx.Refs(fpOf("a")) != 0 {
			t.Error("SetRefs 0 did not clear")
		}
		return nil
	})
}

func TestDBForEachRawAndDeleteRaw(t *testing.T) {
	db := openDB(t)
	mustUpdate(t, db, func(tx *index.Tx) error {
		for _, k := range []string{"b", "a", "c"} {
			if _, _, err := tx.Put(entry("task", k, k, time.Time{})); err != nil {
				return err
			}
		}
		return nil
	})
	var keys []string
	db.View(func(tx *index.Tx) error {
		return tx.ForEachRaw("task", func(k string, rec []byte) error {
			var e index.Entry
			if err := e.Decode(rec); err != nil {
				t.Errorf("raw record of %s does not decode: %v", k, err)
			}
			keys = append(keys, k)
			return nil
		})
	})
	if !slices.Equal(keys, []string{"a", "b", "c"}) {
		t.Fatalf("ForEachRaw order: %v", keys)
	}
	mustUpdate(t, db, func(tx *index.Tx) error { return tx.DeleteRaw("task", "b") })
	db.View(func(tx *index.Tx) error {
		if _, ok, _ := tx.Get("task", "b"); ok {
			t.Error("DeleteRaw left the record")
		}
		// Derived state is untouched by DeleteRaw.
		if u := tx.Usage("task"); u.Keys != 3 {
			t.Errorf("DeleteRaw changed usage: %+v", u)
		}
		return nil
	})
}

func TestDBReopenKeepsDataAndScopes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.Open(path, []string{"task"})
	if err != nil {
		t.Fatal(err)
	}
	if db.Path() != path {
		t.Errorf("Path() = %q", db.Path())
	}
	mustUpdate(t, db, func(tx *index.Tx) error { _, _, err := tx.Put(entry("task", "k", "v", time.Time{})); return err })
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db, err = index.Open(path, []string{"task", "newscope"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *index.Tx) error {
		if !slices.Equal(tx.Scopes(), []string{"newscope", "task"}) {
			t.Errorf("Scopes: %v", tx.Scopes())
		}
		if _, ok, _ := tx.Get("task", "k"); !ok {
			t.Error("entry lost across reopen")
		}
		if u := tx.Usage("task"); u != (index.Usage{Bytes: 1, Keys: 1}) {
			t.Errorf("usage across reopen: %+v", u)
		}
		return nil
	})
}

func TestDBBatchConcurrent(t *testing.T) {
	db := openDB(t)
	const n = 32
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func(i int) {
			k := "k" + string(rune('a'+i%26)) + string(rune('a'+i/26))
			errs <- db.Batch(func(tx *index.Tx) error {
				_, _, err := tx.Put(entry("task", k, k, t0.Add(time.Duration(i)*time.Minute)))
				return err
			})
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	st := checkConsistent(t, db)
	if st.usage["task"] != (index.Usage{Bytes: 3 * n, Keys: n}) || st.expiry != n {
		t.Fatalf("after concurrent batches: usage %+v, expiry %d", st.usage, st.expiry)
	}
}

func TestDBOpenRejectsOtherFormat(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.Open(path, testScopes)
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("meta")).Put([]byte("format"), []byte("99"))
	}); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if db, err := index.Open(path, testScopes); !errors.Is(err, index.ErrFormat) {
		if err == nil {
			db.Close()
		}
		t.Fatalf("Open of a format-99 index: %v, want ErrFormat", err)
	}
	// The failed open released the file: it opens again once fixed.
	b, err = bolt.Open(path, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("index still locked after a failed Open: %v", err)
	}
	b.Close()
}

func TestDBCorruptRecordIsReported(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.Open(path, testScopes)
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx *index.Tx) error { _, _, err := tx.Put(entry("task", "good", "g", time.Time{})); return err })
	db.Close()
	b, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	b.Update(func(tx *bolt.Tx) error {
		return tx.Bucket([]byte("scopes")).Bucket([]byte("task")).Put([]byte("bad"), []byte{1, 2, 3})
	})
	b.Close()
	db, err = index.Open(path, testScopes)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	db.View(func(tx *index.Tx) error {
		if _, _, err := tx.Get("task", "bad"); !errors.Is(err, index.ErrCorruptRecord) || !strings.Contains(err.Error(), "task/bad") {
			t.Errorf("Get of a corrupt record: %v", err)
		}
		if _, ok, err := tx.Get("task", "good"); !ok || err != nil {
			t.Errorf("Get of a good record next to a corrupt one: %v %v", ok, err)
		}
		if err := tx.ForEach("task", func(*index.Entry) error { return nil }); !errors.Is(err, index.ErrCorruptRecord) {
			t.Errorf("ForEach over a corrupt record: %v", err)
		}
		return nil
	})
	// Put over and Delete of a corrupt record fail instead of guessing
	// the derived state.
	if err := db.Update(func(tx *index.Tx) error { _, _, err := tx.Put(entry("task", "bad", "x", time.Time{})); return err }); !errors.Is(err, index.ErrCorruptRecord) {
		t.Errorf("Put over a corrupt record: %v", err)
	}
	if err := db.Update(func(tx *index.Tx) error { _, _, err := tx.Delete("task", "bad"); return err }); !errors.Is(err, index.ErrCorruptRecord) {
		t.Errorf("Delete of a corrupt record: %v", err)
	}
	mustUpdate(t, db, func(tx *index.Tx) error { return tx.DeleteRaw("task", "bad") })
	if err := db.View(func(tx *index.Tx) error { return tx.ForEach("task", func(*index.Entry) error { return nil }) }); err != nil {
		t.Errorf("ForEach after DeleteRaw: %v", err)
	}
}
