package index_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

const pageSize = 4096

// damagedFixture writes an index of n task entries (each with an expiry)
// plus one system entry, closes it and returns its path and bytes.
func damagedFixture(t *testing.T, n int) (string, []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := index.Open(path, testScopes)
	if err != nil {
		t.Fatal(err)
	}
	mustUpdate(t, db, func(tx *index.Tx) error {
		for i := 0; i < n; i++ {
			if _, _, err := tx.Put(entry("task", fmt.Sprintf("k%04d", i), fmt.Sprint("value ", i), t0.Add(48*60*60*1e9))); err != nil {
				return err
			}
		}
		_, _, err := tx.Put(entry("system", "sys", "s", t0.Add(1e9)))
		return err
	})
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return path, b
}

// walkAll reads every record of every scope, the way fsck does.
func walkAll(db *index.DB) error {
	return db.View(func(tx *index.Tx) error {
		for _, s := range tx.Scopes() {
			if err := tx.ForEachRaw(s, func(string, []byte) error { return nil }); err != nil {
				return err
			}
			_ = tx.Usage(s)
		}
		_ = tx.ExpiryIndexSize()
		return tx.ForEachRef(func(index.Fingerprint, uint64) error { return nil })
	})
}

// TestOpenDamaged: an index file that is cut short, zeroed or overwritten
// with garbage, page by page, never panics: Open fails with a
// *DamagedError naming the file, or, for damage Open does not read, the
// transaction that meets it does.
func TestOpenDamaged(t *testing.T) {
	path, good := damagedFixture(t, 400)
	pages := len(good) / pageSize
	try := func(what string, data []byte) {
		t.Helper()
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		db, err := index.Open(path, testScopes)
		if err == nil {
			err = walkAll(db)
			db.Close()
		}
		if err == nil || errors.Is(err, index.ErrCorruptRecord) {
			return // damage in a free page, or in a record's bytes only
		}
		var de *index.DamagedError
		if !errors.As(err, &de) || !errors.Is(err, index.ErrDamaged) || de.Path != path || !strings.Contains(err.Error(), path) {
			t.Errorf("%s: %v (%T), want a *DamagedError naming %s", what, err, err, path)
		}
	}
	for _, n := range []int{pageSize - 1, 2 * pageSize, len(good) / 2, len(good) - pageSize} {
		try(fmt.Sprintf("cut to %d bytes", n), good[:n])
	}
	for p := 0; p < pages; p++ {
		for _, fill := range []byte{0x00, 0xff, 0x5a} {
			b := bytes.Clone(good)
			for i := p * pageSize; i < (p+1)*pageSize; i++ {
				b[i] = fill ^ byte(i*31)
			}
			try(fmt.Sprintf("page %d filled with %#x", p, fill), b)
		}
	}
	// Both meta pages gone: bbolt refuses the file.
	b := bytes.Clone(good)
	clear(b[:2*pageSize])
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := index.Open(path, testScopes); !errors.Is(err, index.ErrDamaged) {
		t.Errorf("both meta pages zeroed: %v, want ErrDamaged", err)
	}
	// The failed opens let go of the file: a good index opens at once.
	if err := os.WriteFile(path, good, 0o600); err != nil {
		t.Fatal(err)
	}
	db, err := index.Open(path, testScopes)
	if err != nil {
		t.Fatalf("good file after the damaged ones: %v", err)
	}
	if err := walkAll(db); err != nil {
		t.Error(err)
	}
	db.Close()
}

// TestGuardKeepsBugs: a panic in the caller's own code inside a transaction
// is not index damage: it keeps panicking.
func TestGuardKeepsBugs(t *testing.T) {
	db := openDB(t)
	defer func() {
		if r := recover(); r != "a bug" {
			t.Errorf("recovered %v, want the caller's own panic", r)
		}
	}()
	_ = db.View(func(*index.Tx) error { panic("a bug") })
	t.Error("View returned")
}

// leafWith returns the index of a leaf page whose bytes hold marker but
// not avoid.
func leafWith(b []byte, marker, avoid string) int {
	for p := 2; p < len(b)/pageSize; p++ {
		pg := b[p*pageSize : (p+1)*pageSize]
		if binary.LittleEndian.Uint16(pg[8:]) == 0x02 && bytes.Contains(pg, []byte(marker)) && !bytes.Contains(pg, []byte(avoid)) {
			return p
		}
	}
	return -1
}

// TestSalvage: with a leaf page of the task bucket destroyed, Salvage reads
// every other record (the keys after the damage by lookups of the names the
// expiry index holds), reports the damage, and leaves the file as it was.
func TestSalvage(t *testing.T) {
	const n = 400
	path, good := damagedFixture(t, n)
	p := leafWith(good, "k0200", "task\x00k0200")
	if p < 0 {
		t.Fatal("no leaf page holds task/k0200")
	}
	b := bytes.Clone(good)
	for i := p * pageSize; i < (p+1)*pageSize; i++ {
		b[i] = 0xee
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	sal, err := index.Salvage(path)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, r := range sal.Records {
		e := index.Entry{Scope: r.Scope, Key: r.Key}
		if err := e.Decode(r.Raw); err != nil {
			t.Errorf("salvaged %s does not decode: %v", r.ScopeKey, err)
		}
		got[r.ScopeKey.String()] = true
	}
	if len(sal.Names) != n+1 {
		t.Errorf("%d names from the expiry index, want %d", len(sal.Names), n+1)
	}
	if len(sal.Problems) == 0 {
		t.Error("no problem reported")
	}
	missing := 0
	for i := 0; i < n; i++ {
		if !got[fmt.Sprintf("task/k%04d", i)] {
			missing++
		}
	}
	if missing == 0 || missing > 100 {
		t.Errorf("%d of %d task records not salvaged, want the few of one page (problems: %q)", missing, n, sal.Problems)
	}
	if !got["system/sys"] || !got["task/k0000"] || !got[fmt.Sprintf("task/k%04d", n-1)] {
		t.Errorf("records on both sides of the damage are missing")
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, b) {
		t.Error("Salvage changed the file")
	}
	// An unreadable file: both meta pages gone.
	clear(b[:2*pageSize])
	os.WriteFile(path, b, 0o600)
	if _, err := index.Salvage(path); !errors.Is(err, index.ErrDamaged) {
		t.Errorf("Salvage of a file without meta pages: %v", err)
	}
}

// FuzzOpenIndex opens mutations of a small valid index file: Salvage, Open,
// Verify and then a walk of everything through bbolt may fail (with
// ErrDamaged for what cannot be read) but never panic, crash or hang.
func FuzzOpenIndex(f *testing.F) {
	dir := f.TempDir()
	path := filepath.Join(dir, "seed.db")
	db, err := index.Open(path, testScopes)
	if err != nil {
		f.Fatal(err)
	}
	if err := db.Update(func(tx *index.Tx) error {
		for i := 0; i < 40; i++ {
			if _, _, err := tx.Put(entry("task", fmt.Sprintf("k%02d", i), fmt.Sprint(i), t0.Add(1e12))); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		f.Fatal(err)
	}
	db.Close()
	good, err := os.ReadFile(path)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add(good[:len(good)/2])
	f.Add(good[:3*pageSize])
	f.Fuzz(func(t *testing.T, b []byte) {
		p := filepath.Join(t.TempDir(), "index.db")
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			if _, err := index.Salvage(p); err != nil && !errors.Is(err, index.ErrDamaged) {
				t.Logf("Salvage: %v", err)
			}
			db, err := index.Open(p, testScopes)
			if err != nil {
				return
			}
			defer db.Close()
			// What fsck does: the raw check, then (if it passed) the walk
			// through bbolt.
			if err := db.Verify(nil); err != nil {
				if !errors.Is(err, index.ErrDamaged) {
					t.Errorf("Verify: %v", err)
				}
				return
			}
			if err := walkAll(db); err != nil && !errors.Is(err, index.ErrDamaged) && !errors.Is(err, index.ErrCorruptRecord) {
				t.Errorf("a walk after Verify passed: %v", err)
			}
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("hung")
		}
	})
}
