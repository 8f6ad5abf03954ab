package store

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	"github.com/iriskvfs/iriskvfs/index"
)

// Problem kinds found by Fsck.
const (
	ProblemCorruptRecord = "corrupt-record" // an index record that does not decode
	ProblemMissingBlob   = "missing-blob"   // an entry whose value file is gone
	ProblemSizeMismatch  = "size-mismatch"  // a value file of the wrong size
	ProblemHashMismatch  = "hash-mismatch"  // a value file whose SHA-256 differs
	ProblemOrphanBlob    = "orphan-blob"    // a value file no entry references
	ProblemStrayFile     = "stray-file"     // a file in tmp/ or blobs/ that is not ours
	ProblemUsageDrift    = "usage-drift"    // usage counters that disagree with the entries
	ProblemRefsDrift     = "refs-drift"     // reference counts that disagree with the entries
	ProblemExpiryDrift   = "expiry-drift"   // an expiry index that disagrees with the entries
	ProblemUnknownScope  = "unknown-scope"  // entries of a scope the policy no longer has
	ProblemIndexDamaged  = "index-damaged"  // an index file that cannot be read (RebuildIndex)
)

// Problem is one inconsistency.
type Problem struct {
	Kind   string `json:"kind"`
	Scope  string `json:"scope,omitempty"`
	Key    string `json:"key,omitempty"`
	Detail string `json:"detail"`
}

func (p Problem) String() string {
	where := p.Scope
	if p.Key != "" {
		where += "/" + p.Key
	}
	if where != "" {
		where += ": "
	}
	return fmt.Sprintf("%s: %s%s", p.Kind, where, p.Detail)
}

// FsckReport is what Fsck found and, with repair, what it did.
type FsckReport struct {
	Entries  int       `json:"entries_checked"`
	Blobs    int       `json:"blobs_checked"`
	Problems []Problem `json:"problems"`
	Repairs  []string  `json:"repairs"`
	// Lost names the keys a repair could not keep, and why (a rebuild of
	// a damaged index; dropped broken entries are among the repairs).
	Lost []string `json:"lost,omitempty"`
}

// Clean reports whether nothing was wrong.
func (r *FsckReport) Clean() bool { return len(r.Problems) == 0 }

// Fsck checks every entry against its value file (presence, size, SHA-256),
// the derived state (usage, reference counts, expiry index) against the
// entries, and the files against the index. With repair it quarantines the
// blobs of broken entries and drops those entries, deletes undecodable
// records, orphan and stray files, and rewrites the derived state. Writers
// wait while it runs.
func (s *Store) Fsck(repair bool) (*FsckReport, error) {
	if s.closed.Load() {
		return nil, ErrClosed
	}
	s.exclusive.Lock()
	defer s.exclusive.Unlock()
	// The whole index, read without trusting it first: bbolt would panic
	// on some damage and loop for ever on some other.
	if err := s.db.Verify(nil); err != nil {
		return nil, opErr("fsck", "", "", err)
	}
	<-s.sweepDone // the startup sweep must not race the orphan check
	rep := &FsckReport{Problems: []Problem{}, Repairs: []string{}}

	type scopeScan struct {
		usage     index.Usage
		corrupt   []string
		entries   []index.Entry
		hasBucket bool
	}
	scans := map[string]*scopeScan{}
	refs := map[index.Fingerprint]uint64{}
	storedRefs := map[index.Fingerprint]uint64{}
	storedUsage := map[string]index.Usage{}
	var expiryStored, expiryWant int
	err := s.db.View(func(tx *index.Tx) error {
		for _, scope := range tx.Scopes() {
			sc := &scopeScan{hasBucket: true}
			scans[scope] = sc
			storedUsage[scope] = tx.Usage(scope)
			err := tx.ForEachRaw(scope, func(key string, rec []byte) error {
				e := index.Entry{Scope: scope, Key: key}
				if err := e.Decode(rec); err != nil {
					sc.corrupt = append(sc.corrupt, key)
					return nil
				}
				sc.entries = append(sc.entries, e)
				sc.usage.Bytes += e.Size
				sc.usage.Keys++
				refs[e.Fingerprint]++
				if !e.ExpiresAt.IsZero() {
					expiryWant++
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		expiryStored = tx.ExpiryIndexSize()
		return tx.ForEachRef(func(fp index.Fingerprint, n uint64) error {
			storedRefs[fp] = n
			return nil
		})
	})
	if err != nil {
		return nil, opErr("fsck", "", "", err)
	}

	// Every distinct blob is checked once; a bad one breaks every entry on it.
	blobState := map[index.Fingerprint]Problem{}
	checked := map[index.Fingerprint]bool{}
	scopes := make([]string, 0, len(scans))
	for n := range scans {
		scopes = append(scopes, n)
	}
	sort.Strings(scopes)
	var broken []index.Entry
	for _, scope := range scopes {
		sc := scans[scope]
		if _, known := s.policy.Scope(scope); !known && len(sc.entries)+len(sc.corrupt) > 0 {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemUnknownScope, Scope: scope,
				Detail: fmt.Sprintf("%d entries in a scope the policy does not define (kept; add the scope back to reach them)", len(sc.entries))})
		}
		for _, key := range sc.corrupt {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemCorruptRecord, Scope: scope, Key: key, Detail: "index record does not decode"})
		}
		for _, e := range sc.entries {
			rep.Entries++
			if !checked[e.Fingerprint] {
				checked[e.Fingerprint] = true
				rep.Blobs++
				if p, bad := s.checkBlob(&e); bad {
					blobState[e.Fingerprint] = p
				}
			}
			if p, bad := blobState[e.Fingerprint]; bad {
				p.Scope, p.Key = e.Scope, e.Key
				rep.Problems = append(rep.Problems, p)
				broken = append(broken, e)
			}
		}
	}
	for _, scope := range scopes {
		sc := scans[scope]
		if st := storedUsage[scope]; st != sc.usage {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemUsageDrift, Scope: scope,
				Detail: fmt.Sprintf("counters say %d keys/%d bytes, entries hold %d keys/%d bytes", st.Keys, st.Bytes, sc.usage.Keys, sc.usage.Bytes)})
		}
	}
	refsDrift := len(refs) != len(storedRefs)
	for fp, n := range refs {
		if storedRefs[fp] != n {
			refsDrift = true
			break
		}
	}
	if refsDrift {
		rep.Problems = append(rep.Problems, Problem{Kind: ProblemRefsDrift, Detail: "blob reference counts disagree with the entries"})
	}
	if expiryStored != expiryWant {
		rep.Problems = append(rep.Problems, Problem{Kind: ProblemExpiryDrift,
			Detail: fmt.Sprintf("expiry index holds %d keys, entries need %d", expiryStored, expiryWant)})
	}
	orphans, strays, err := s.unreferencedFiles(refs)
	if err != nil {
		return nil, opErr("fsck", "", "", err)
	}
	for _, p := range orphans {
		rep.Problems = append(rep.Problems, Problem{Kind: ProblemOrphanBlob, Detail: p})
	}
	for _, p := range strays {
		rep.Problems = append(rep.Problems, Problem{Kind: ProblemStrayFile, Detail: p})
	}

	if !repair || rep.Clean() {
		return rep, nil
	}

	// Repair: quarantine bad blobs, drop broken and undecodable entries,
	// rebuild the derived state from what remains, remove unreferenced files.
	// A bad blob is linked into quarantine now and leaves blobs/ only after
	// the commit that drops its entries: a repair killed in between leaves
	// entries that still point at their (refused) value, never at nothing.
	stamp := s.now().UTC().Format("20060102T150405")
	var quarantined []index.Fingerprint
	for fp, p := range blobState {
		if p.Kind == ProblemMissingBlob {
			continue
		}
		dst := filepath.Join(s.dir, quarantineDir, hex.EncodeToString(fp[:])+"."+stamp)
		if err := os.Link(s.BlobPath(fp), dst); err != nil && !errors.Is(err, os.ErrExist) {
			return rep, opErr("fsck", "", "", err)
		}
		quarantined = append(quarantined, fp)
		s.hot.remove(fp)
		s.verified.forget(fp)
		rep.Repairs = append(rep.Repairs, "quarantined "+dst)
	}
	err = s.db.Update(func(tx *index.Tx) error {
		for _, scope := range scopes {
			for _, key := range scans[scope].corrupt {
				if err := tx.DeleteRaw(scope, key); err != nil {
					return err
				}
				rep.Repairs = append(rep.Repairs, fmt.Sprintf("dropped undecodable record %s/%s", scope, key))
			}
		}
		for _, e := range broken {
			if err := tx.DeleteRaw(e.Scope, e.Key); err != nil {
				return err
			}
			rep.Repairs = append(rep.Repairs, fmt.Sprintf("dropped %s/%s (%s): write it again", e.Scope, e.Key, blobState[e.Fingerprint].Kind))
		}
		return rebuildDerived(tx, scopes)
	})
	if err != nil {
		return rep, opErr("fsck", "", "", err)
	}
	for _, fp := range quarantined {
		if err := os.Remove(s.BlobPath(fp)); err != nil && !errors.Is(err, os.ErrNotExist) {
			return rep, opErr("fsck", "", "", err)
		}
	}
	for _, scope := range scopes {
		for _, key := range scans[scope].corrupt {
			s.changed(scope, key)
		}
	}
	for _, e := range broken {
		s.changed(e.Scope, e.Key)
	}
	rep.Repairs = append(rep.Repairs, "rebuilt usage counters, reference counts and expiry index")
	for _, p := range append(orphans, strays...) {
		if err := os.RemoveAll(p); err != nil {
			return rep, opErr("fsck", "", "", err)
		}
		rep.Repairs = append(rep.Repairs, "removed "+p)
	}
	return rep, nil
}

// rebuildDerived recomputes usage, reference counts and the expiry index
// from the entries.
func rebuildDerived(tx *index.Tx, scopes []string) error {
	if err := tx.ClearRefs(); err != nil {
		return err
	}
	if err := tx.ClearExpiry(); err != nil {
		return err
	}
	refs := map[index.Fingerprint]uint64{}
	for _, scope := range scopes {
		var u index.Usage
		err := tx.ForEach(scope, func(e *index.Entry) error {
			u.Bytes += e.Size
			u.Keys++
			refs[e.Fingerprint]++
			return tx.IndexExpiry(e)
		})
		if err != nil {
			return err
		}
		if err := tx.SetUsage(scope, u); err != nil {
			return err
		}
	}
	for fp, n := range refs {
		if err := tx.SetRefs(fp, n); err != nil {
			return err
		}
	}
	return nil
}

// checkBlob verifies the value file of e in full (fsck never trusts caches).
func (s *Store) checkBlob(e *index.Entry) (Problem, bool) {
	path := s.BlobPath(e.Fingerprint)
	f, err := os.Open(path)
	if err != nil {
		return Problem{Kind: ProblemMissingBlob, Detail: fmt.Sprintf("value file %s: %v", path, err)}, true
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return Problem{Kind: ProblemMissingBlob, Detail: err.Error()}, true
	}
	if fi.Size() != e.Size {
		return Problem{Kind: ProblemSizeMismatch, Detail: fmt.Sprintf("value file has %d bytes, entry says %d", fi.Size(), e.Size)}, true
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return Problem{Kind: ProblemHashMismatch, Detail: fmt.Sprintf("reading value file: %v", err)}, true
	}
	var got index.Fingerprint
	copy(got[:], h.Sum(nil))
	if got != e.Fingerprint {
		return Problem{Kind: ProblemHashMismatch, Detail: "SHA-256 of the value file is " + hex.EncodeToString(got[:])}, true
	}
	return Problem{}, false
}

// unreferencedFiles lists blob files no entry uses and files in blobs/ or
// tmp/ that are not the store's (tmp files of live writers excepted).
func (s *Store) unreferencedFiles(refs map[index.Fingerprint]uint64) (orphans, strays []string, err error) {
	root := filepath.Join(s.dir, blobsDir)
	dirs, err := readDirNames(root)
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(dirs)
	for _, d := range dirs {
		dir := filepath.Join(root, d)
		if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() || len(d) != 2 {
			strays = append(strays, dir)
			continue
		}
		names, err := readDirNames(dir)
		if err != nil {
			return nil, nil, err
		}
		sort.Strings(names)
		for _, n := range names {
			fp, ok := parseBlobName(n)
			switch {
			case !ok || n[:2] != d:
				strays = append(strays, filepath.Join(dir, n))
			case refs[fp] == 0 && !s.isInflight(fp):
				orphans = append(orphans, filepath.Join(dir, n))
			}
		}
	}
	names, err := readDirNames(filepath.Join(s.dir, tmpDir))
	if err != nil {
		return nil, nil, err
	}
	sort.Strings(names)
	s.tmpMu.Lock()
	defer s.tmpMu.Unlock()
	for _, n := range names {
		if _, live := s.liveTmp[n]; !live {
			strays = append(strays, filepath.Join(s.dir, tmpDir, n))
		}
	}
	return orphans, strays, nil
}

func (s *Store) isInflight(fp index.Fingerprint) bool {
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	return s.inflight[fp] > 0
}
