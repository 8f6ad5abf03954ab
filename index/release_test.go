package index_test

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/index"
)

// mappedKB is this process's resident kB of the mappings of file path
// (/proc/self/smaps).
func mappedKB(t *testing.T, path string) int {
	t.Helper()
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		t.Skipf("no smaps: %v", err)
	}
	defer f.Close()
	kb, in := 0, false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if strings.Contains(fields[0], "-") && !strings.HasSuffix(fields[0], ":") {
			in = len(fields) >= 6 && fields[len(fields)-1] == path
			continue
		}
		if in && fields[0] == "Rss:" {
			n, _ := strconv.Atoi(fields[1])
			kb += n
		}
	}
	return kb
}

// TestReleasePages: after a scan of 20k entries the index's pages are
// resident in the process; ReleasePages gives them back, and every entry
// reads the same afterwards (the pages come back from the file).
func TestReleasePages(t *testing.T) {
	db := openDB(t)
	const n = 20000
	mustUpdate(t, db, func(tx *index.Tx) error {
		for i := 0; i < n; i++ {
			e := entry("task", fmt.Sprintf("key-%06d", i), fmt.Sprint(i), t0.Add(24*3600e9))
			e.ContentType = "text/plain"
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
		}
		return nil
	})
	scan := func() (count int, sum int64) {
		t.Helper()
		if err := db.View(func(tx *index.Tx) error {
			return tx.ForEach("task", func(e *index.Entry) error {
				count++
				sum += e.Size + int64(e.Fingerprint[0])
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		return count, sum
	}
	// Touch every page without the releases ForEach makes as it goes.
	if err := db.View(func(tx *index.Tx) error {
		return tx.ForEachRaw("task", func(key string, rec []byte) error { return nil })
	}); err != nil {
		t.Fatal(err)
	}
	before := mappedKB(t, db.Path())
	if before < 1024 {
		t.Fatalf("a scan of %d entries left %d kB of the index resident; expected over 1 MB", n, before)
	}
	if err := db.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	after := mappedKB(t, db.Path())
	t.Logf("index resident: %d kB after the scan, %d kB after ReleasePages", before, after)
	if after > before/4 {
		t.Fatalf("after ReleasePages %d kB of the index still resident (before: %d kB)", after, before)
	}
	// ForEach gives pages back as it goes: the scan leaves little behind,
	// and reads the same as before any release.
	n1, s1 := scan()
	if kb := mappedKB(t, db.Path()); kb > before/3 {
		t.Errorf("a ForEach of %d entries left %d kB resident (a scan without releases: %d kB)", n, kb, before)
	} else {
		t.Logf("a ForEach of %d entries left %d kB resident", n, kb)
	}
	if n2, s2 := scan(); n2 != n1 || s2 != s1 || n1 != n {
		t.Fatalf("after ReleasePages the scan read %d entries (sum %d), before %d (sum %d)", n2, s2, n1, s1)
	}
	// A write after the release, and a read of it.
	mustUpdate(t, db, func(tx *index.Tx) error {
		_, _, err := tx.Put(entry("task", "late", "late", t0.Add(24*3600e9)))
		return err
	})
	if err := db.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	if n3, _ := scan(); n3 != n+1 {
		t.Fatalf("after a write and a release, %d entries", n3)
	}
}

// TestCommitsAndReadsDoNotPileUpPages: each commit and lookup maps pages of
// the index in (the kernel maps 16 around each fault); the DB gives them
// back as it goes, so random puts and gets over a large index leave little
// of it resident, where without the releases they map most of the file.
func TestCommitsAndReadsDoNotPileUpPages(t *testing.T) {
	db := openDB(t)
	const n = 20000
	mustUpdate(t, db, func(tx *index.Tx) error {
		for i := 0; i < n; i++ {
			if _, _, err := tx.Put(entry("task", fmt.Sprintf("key-%06d", i), fmt.Sprint(i), t0.Add(24*3600e9))); err != nil {
				return err
			}
		}
		return nil
	})
	if err := db.ReleasePages(); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(db.Path())
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 300; i++ {
		k := fmt.Sprintf("key-%06d", (i*7919)%n)
		mustUpdate(t, db, func(tx *index.Tx) error {
			_, _, err := tx.Put(entry("task", k, "new"+k, t0.Add(48*3600e9)))
			return err
		})
		if err := db.View(func(tx *index.Tx) error {
			_, _, err := tx.Get("task", fmt.Sprintf("key-%06d", (i*104729)%n))
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	kb := mappedKB(t, db.Path())
	t.Logf("after 300 random puts and gets, %d kB of a %d kB index resident", kb, fi.Size()>>10)
	if kb > 1024 {
		t.Errorf("%d kB of the index resident after 300 random puts and gets, over 1 MB", kb)
	}
}
