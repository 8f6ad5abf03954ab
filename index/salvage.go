package index

import (
	"bytes"
	"fmt"
	"os"
	"strings"
)

// ScopeKey names an entry.
type ScopeKey struct{ Scope, Key string }

func (k ScopeKey) String() string { return k.Scope + "/" + k.Key }

// Record is an entry record read back from a damaged index, undecoded.
type Record struct {
	ScopeKey
	Raw []byte
}

// Salvaged is what Salvage could read of a damaged index.
type Salvaged struct {
	Records []Record
	// Names are the keys the expiry index names: keys that existed, whose
	// records may or may not have been readable.
	Names []ScopeKey
	// Problems are the parts that could not be read, and why.
	Problems []string
}

// Salvage reads what it can of the index file at path, without changing it
// and without bbolt (see raw.go: no page is trusted, so damage can neither
// panic nor loop): every entry record of every scope bucket reachable from
// the newest valid meta page, walking around the pages it cannot read, and
// the names in the expiry index. When that tree has unreadable parts, the
// tree of the meta page before it (one commit older, whose pages that
// commit did not reuse) fills in the records it still has: a key the last
// commit deleted may come back that way. Salvage fails only when neither
// meta page can be read.
func Salvage(path string) (*Salvaged, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	metas := readMetas(f, fi.Size())
	if len(metas) == 0 {
		return nil, &DamagedError{Path: path, Reason: "neither meta page is readable"}
	}
	out := &Salvaged{}
	seen := map[ScopeKey]bool{}
	named := map[ScopeKey]bool{}
	for i, m := range metas {
		t := newRawTree(f, fi.Size(), m)
		t.walk(func(scope, key string, rec []byte) {
			k := ScopeKey{scope, key}
			if !seen[k] {
				seen[k] = true
				out.Records = append(out.Records, Record{k, bytes.Clone(rec)})
			}
		}, func(k []byte) {
			if scope, key, ok := splitExpiryKey(k); ok && !named[ScopeKey{scope, key}] {
				named[ScopeKey{scope, key}] = true
				out.Names = append(out.Names, ScopeKey{scope, key})
			}
		})
		if i == 0 {
			out.Problems = t.problems
		} else {
			for _, p := range t.problems {
				out.Problems = append(out.Problems, fmt.Sprintf("(the previous commit's tree) %s", p))
			}
		}
		if len(t.problems) == 0 {
			break
		}
	}
	return out, nil
}

// Verify reads the whole index as the current transaction sees it, with the
// reader of raw.go: a page out of range, of the wrong kind or reached
// twice, an element past its page, fail it with a *DamagedError naming the
// first problem. bbolt itself would panic on some of these and loop for
// ever on others. The pages Verify reads are those of a read transaction
// it holds open, which commits meanwhile do not reuse. It reads the whole
// file (some 25 ms for 100k keys from the page cache); when stop (if not
// nil) says so, it gives up early and reports nothing.
func (db *DB) Verify(stop func() bool) error {
	return db.View(func(tx *Tx) error {
		f, err := os.Open(db.path)
		if err != nil {
			return err
		}
		defer f.Close()
		fi, err := f.Stat()
		if err != nil {
			return err
		}
		txid := uint64(tx.tx.ID())
		for _, m := range readMetas(f, fi.Size()) {
			if m.txid != txid {
				continue
			}
			t := newRawTree(f, fi.Size(), m)
			t.stop = stop
			t.walk(nil, nil)
			if len(t.problems) == 0 || stop != nil && stop() {
				return nil
			}
			reason := t.problems[0]
			if n := len(t.problems) - 1; n > 0 {
				reason += fmt.Sprintf(", and %d more problem%s", n, strings.Repeat("s", min(n-1, 1)))
			}
			return &DamagedError{Path: db.path, Reason: reason}
		}
		// Our meta page was written over by two commits since the
		// transaction began: the tree it roots is not ours to judge.
		return nil
	})
}
