package store

import (
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
)

// originXattr is set on every blob file when it is written: the scope and
// key it was written under and its content type, as JSON. Key names live
// only in the index; this is their one copy beside the value, so that a
// rebuild of a lost index can give orphaned values their names back. It
// rides on the fsync that makes the blob durable, and is best effort: a
// filesystem without user xattrs just does not have it.
const originXattr = "user.iris.origin"

type blobOrigin struct {
	Scope       string `json:"scope"`
	Key         string `json:"key"`
	ContentType string `json:"content_type,omitempty"`
}

// RecoveredPrefix starts the key a rebuild gives a value file whose name is
// unknown (no origin, or its name taken): recovered-<first 12 hex digits of
// its SHA-256>, in the artifacts scope (or the policy's last scope).
const RecoveredPrefix = "recovered-"

// blobFile is a value file found on disk.
type blobFile struct {
	fp     index.Fingerprint
	path   string
	size   int64
	mtime  time.Time
	origin *blobOrigin
}

// RebuildIndex replaces the index of the store in dir, which cannot be
// opened or read (damage is why, an index.ErrDamaged), with one rebuilt
// from what is left, then checks and repairs the result as Fsck(true) does.
// The store must not be open (it takes the store's lock):
//
//   - every record that can still be read from the damaged index is kept
//     (index.Salvage: read-only, around damaged pages where it can);
//   - the damaged file is moved aside to index.db.corrupt-TIME;
//   - every value file that no kept record uses is adopted: under the
//     scope and key its origin xattr names when that key is free and the
//     scope has room, else as RecoveredPrefix+sha12 in artifacts, else
//     (no room anywhere) moved to quarantine/. Adopted keys get the value
//     file's mtime as their creation time and a fresh lifetime (the
//     scope's TTL from now);
//   - the report's Lost lists each key that could not be kept, and why:
//     records whose value file is gone, names the damaged index still
//     showed (its expiry index) but whose record could not be read and no
//     value file names, entries the final check dropped.
func RebuildIndex(dir string, opts Options, damage error) (*FsckReport, error) {
	if opts.Policy == nil {
		opts.Policy = quota.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	lock, err := acquireLock(filepath.Join(abs, lockName))
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", abs, err)
	}
	s := &Store{dir: abs, policy: opts.Policy, now: opts.Now, log: opts.Logger}
	rep, err := s.rebuildIndex(damage)
	lock.Close()
	if err != nil {
		return rep, fmt.Errorf("rebuild the index of %s: %w", abs, err)
	}
	st, err := Open(abs, opts)
	if err != nil {
		return rep, err
	}
	defer st.Close()
	check, err := st.Fsck(true)
	if err != nil {
		return rep, err
	}
	rep.Entries, rep.Blobs = check.Entries, check.Blobs
	rep.Problems = append(rep.Problems, check.Problems...)
	rep.Repairs = append(rep.Repairs, check.Repairs...)
	for _, p := range check.Problems {
		switch p.Kind {
		case ProblemMissingBlob, ProblemSizeMismatch, ProblemHashMismatch:
			rep.Lost = append(rep.Lost, fmt.Sprintf("%s/%s: %s, dropped", p.Scope, p.Key, p.Kind))
		}
	}
	return rep, nil
}

func (s *Store) rebuildIndex(damage error) (*FsckReport, error) {
	rep := &FsckReport{Problems: []Problem{}, Repairs: []string{}, Lost: []string{}}
	if err := s.prepareLayout(); err != nil {
		return rep, err
	}
	// 0. The values the index journal still holds: a crash may have left
	// their files short (they were synced by the journal alone). They are
	// content-addressed and checked, so whichever index the journal
	// belonged to, writing them again is safe; the adoption below names
	// them by the origin they carry.
	if attach, err := index.JournalAttachments(filepath.Join(s.dir, indexName)); err == nil && len(attach) > 0 {
		if err := s.replayValues(attach); err != nil {
			return rep, err
		}
	}
	blobs, err := s.scanBlobs()
	if err != nil {
		return rep, err
	}
	path := filepath.Join(s.dir, indexName)
	why := "cannot be read"
	var de *index.DamagedError
	if errors.As(damage, &de) {
		why = de.Reason
	} else if damage != nil {
		why = damage.Error()
	}
	rep.Problems = append(rep.Problems, Problem{Kind: ProblemIndexDamaged, Detail: path + ": " + why})

	// 1. What the damaged index still holds.
	sal := &index.Salvaged{}
	fi, statErr := os.Stat(path)
	if statErr != nil && !errors.Is(statErr, os.ErrNotExist) {
		return rep, statErr
	}
	if statErr == nil && fi.Size() > 0 {
		got, err := index.Salvage(path)
		if err != nil {
			rep.Problems = append(rep.Problems, Problem{Kind: ProblemIndexDamaged, Detail: "nothing could be read from it: " + err.Error()})
		} else {
			sal = got
			for _, p := range got.Problems {
				rep.Problems = append(rep.Problems, Problem{Kind: ProblemIndexDamaged, Detail: p})
			}
		}
	}

	// 2. The damaged file goes aside, kept for a post-mortem.
	stamp := s.now().UTC().Format("20060102T150405")
	if statErr == nil {
		aside := path + ".corrupt-" + stamp
		if err := os.Rename(path, aside); err != nil {
			return rep, err
		}
		if err := syncDir(s.dir); err != nil {
			return rep, err
		}
		rep.Repairs = append(rep.Repairs, "moved the damaged index to "+aside)
	}

	// 3. A fresh index: the salvaged records, then the orphaned values.
	scopes := s.policy.Names()
	known := map[string]bool{}
	for _, n := range scopes {
		known[n] = true
	}
	for _, r := range sal.Records {
		if !known[r.Scope] && quota.ValidScopeName(r.Scope) {
			known[r.Scope] = true
			scopes = append(scopes, r.Scope)
		}
	}
	db, err := index.Open(path, scopes)
	if err != nil {
		return rep, err
	}
	defer db.Close()
	byFP := make(map[index.Fingerprint]*blobFile, len(blobs))
	for i := range blobs {
		byFP[blobs[i].fp] = &blobs[i]
	}
	lost := map[string]bool{}
	addLost := func(name, why string) {
		if !lost[name] {
			lost[name] = true
			rep.Lost = append(rep.Lost, name+": "+why)
		}
	}
	var unreadable []index.ScopeKey
	var homeless []*blobFile
	salvaged := 0
	var adopted []string
	now := s.now().UTC()
	err = db.Update(func(tx *index.Tx) error {
		for _, r := range sal.Records {
			e := index.Entry{Scope: r.Scope, Key: r.Key}
			switch {
			case e.Decode(r.Raw) != nil:
				unreadable = append(unreadable, r.ScopeKey)
				continue
			case !quota.ValidScopeName(r.Scope) || ValidateKey(r.Key) != nil:
				addLost(r.ScopeKey.String(), "its name in the damaged index is not a valid one")
				continue
			case byFP[e.Fingerprint] == nil:
				addLost(r.ScopeKey.String(), "its value file is missing")
				continue
			}
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
			salvaged++
		}
		var orphans []*blobFile
		for i := range blobs {
			if tx.Refs(blobs[i].fp) == 0 {
				orphans = append(orphans, &blobs[i])
			}
		}
		// The newest value file of a name gets it; older ones are recovered
		// under their hashes.
		sort.SliceStable(orphans, func(i, j int) bool { return orphans[i].mtime.After(orphans[j].mtime) })
		for _, b := range orphans {
			scope, key, named := s.adoptionName(tx, b)
			if key == "" {
				homeless = append(homeless, b)
				continue
			}
			if _, _, err := tx.Put(s.adoptedEntry(b, scope, key, now)); err != nil {
				return err
			}
			if named {
				adopted = append(adopted, fmt.Sprintf("adopted %s/%s from its value file (%d bytes)", scope, key, b.size))
			} else {
				adopted = append(adopted, fmt.Sprintf("recovered %s/%s: a value file of %d bytes %s", scope, key, b.size, originPhrase(b.origin)))
			}
		}
		return nil
	})
	if err != nil {
		return rep, err
	}
	rep.Repairs = append(rep.Repairs, fmt.Sprintf("salvaged %d records from the damaged index into a new one", salvaged))
	rep.Repairs = append(rep.Repairs, adopted...)
	for _, b := range homeless {
		h := hex.EncodeToString(b.fp[:])
		dst := filepath.Join(s.dir, quarantineDir, h+".unadopted-"+stamp)
		if err := os.Rename(b.path, dst); err != nil {
			return rep, err
		}
		name := "value " + h[:12]
		if b.origin != nil {
			name = b.origin.Scope + "/" + b.origin.Key
		}
		addLost(name, fmt.Sprintf("no scope has room for its %d bytes; kept as %s", b.size, dst))
	}
	// Names the damaged index showed whose records were lost with it.
	err = db.View(func(tx *index.Tx) error {
		for _, n := range append(unreadable, sal.Names...) {
			if _, found, err := tx.Get(n.Scope, n.Key); err == nil && found {
				continue
			}
			addLost(n.String(), "its record could not be read, and no value file names it")
		}
		return nil
	})
	return rep, err
}

// adoptionName picks the key an orphaned value file gets: the one its
// origin names if that is free and its scope has room (named), else a
// recovery key in the recovery scope if it has room, else none.
func (s *Store) adoptionName(tx *index.Tx, b *blobFile) (scope, key string, named bool) {
	fits := func(scope, key string) bool {
		sc, ok := s.policy.Scope(scope)
		if !ok || ValidateKey(key) != nil {
			return false
		}
		if _, found, err := tx.Get(scope, key); err != nil || found {
			return false
		}
		u := tx.Usage(scope)
		return sc.Admit(quota.Usage{Bytes: u.Bytes, Keys: u.Keys}, 0, b.size) == nil
	}
	if o := b.origin; o != nil && fits(o.Scope, o.Key) {
		return o.Scope, o.Key, true
	}
	rs := s.recoveryScope()
	h := hex.EncodeToString(b.fp[:])
	for _, k := range []string{RecoveredPrefix + h[:12], RecoveredPrefix + h} {
		if fits(rs, k) {
			return rs, k, false
		}
	}
	return "", "", false
}

// recoveryScope is where values without a usable name go: artifacts, the
// scope for derived data, or else the policy's last scope.
func (s *Store) recoveryScope() string {
	if _, ok := s.policy.Scope("artifacts"); ok {
		return "artifacts"
	}
	names := s.policy.Names()
	return names[len(names)-1]
}

func (s *Store) adoptedEntry(b *blobFile, scope, key string, now time.Time) index.Entry {
	sc, _ := s.policy.Scope(scope)
	t := index.ClampTime(b.mtime.UTC())
	e := index.Entry{
		Scope: scope, Key: key, Size: b.size, Fingerprint: b.fp,
		CreatedAt: t, ModTime: t, TTL: sc.TTL, Mode: defaultMode,
	}
	if b.origin != nil && b.origin.Key == key && validateContentType(b.origin.ContentType) == nil {
		e.ContentType = b.origin.ContentType
	}
	if e.ContentType == "" {
		e.ContentType = guessContentType(key, sniffFile(b.path))
	}
	if sc.TTL > 0 {
		e.ExpiresAt = now.Add(sc.TTL)
	}
	return e
}

func originPhrase(o *blobOrigin) string {
	if o == nil {
		return "with no recorded name"
	}
	return "first written as " + o.Scope + "/" + o.Key + ", a name now taken or out of room"
}

func sniffFile(path string) []byte {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	b := make([]byte, 512)
	n, _ := io.ReadFull(f, b)
	return b[:n]
}

// scanBlobs lists the value files, with their origins.
func (s *Store) scanBlobs() ([]blobFile, error) {
	var out []blobFile
	for i := 0; i < 256; i++ {
		dir := filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", i))
		names, err := readDirNames(dir)
		if err != nil {
			return nil, err
		}
		sort.Strings(names)
		for _, n := range names {
			fp, ok := parseBlobName(n)
			if !ok || n[:2] != fmt.Sprintf("%02x", i) {
				continue // a stray file: fsck removes it
			}
			p := filepath.Join(dir, n)
			fi, err := os.Lstat(p)
			if err != nil || !fi.Mode().IsRegular() {
				continue
			}
			out = append(out, blobFile{fp: fp, path: p, size: fi.Size(), mtime: fi.ModTime(), origin: readOrigin(p)})
		}
	}
	return out, nil
}

func readOrigin(path string) *blobOrigin {
	buf := make([]byte, 4096)
	n, err := unix.Getxattr(path, originXattr, buf)
	if err != nil {
		return nil
	}
	var o blobOrigin
	if json.Unmarshal(buf[:n], &o) != nil || o.Scope == "" || o.Key == "" {
		return nil
	}
	return &o
}
