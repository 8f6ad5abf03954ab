// Package store is the engine of iriskvfs: scoped keys over a bbolt index
// and content-addressed blob files, with key rules, quotas, TTLs, SHA-256
// verification and an LRU of verified hot content. It knows nothing of FUSE.
//
// Layout of a store directory:
//
//	lock                 flock held by the owning process; holds its pid
//	index.db             the bbolt index (package index)
//	blobs/ab/abcd…       one file per distinct value, named by its SHA-256,
//	                     holding exactly the value's bytes, mode 0444
//	tmp/                 values being written; swept when the store opens
//	quarantine/          blobs that failed verification, moved by fsck --repair
package store

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
)

// Options configure a store. The zero value is the seed's policy, the real
// clock and default cache sizes.
type Options struct {
	Policy *quota.Policy
	// Now is the clock; tests inject one to cross TTL boundaries.
	Now func() time.Time
	// HotBytes bounds the LRU of verified content (default 32 MiB).
	HotBytes int64
	// HotEntryMax is the largest value kept in the LRU (default 1 MiB).
	HotEntryMax int64
	// HotFirstScopes have an LRU pool of their own (HotFirstBytes, default
	// 8 MiB) that other scopes' reads cannot evict: the instructions.
	HotFirstScopes []string
	HotFirstBytes  int64
	// Logger receives integrity failures and repairs (default: discard).
	Logger *slog.Logger
	// TrackReads lists scopes whose reads are counted per key (Stats.Reads):
	// the instructions scope, to see which sets agents load.
	TrackReads []string
	// CheckpointChanges is how many journaled index changes wait before a
	// checkpoint writes them into index.db (0: the index's default).
	CheckpointChanges int
}

// Store is an open store directory. Its methods are safe for concurrent use.
type Store struct {
	dir    string
	policy *quota.Policy
	now    func() time.Time
	log    *slog.Logger
	db     *index.DB
	lock   *os.File

	hot      *hotTiers
	verified *verifiedFiles

	// blobMu guards inflight: the blobs that a writer has named (or is about
	// to name) but not yet committed. A blob is removed only under blobMu,
	// when no writer has it in flight and the index holds no reference.
	blobMu   sync.Mutex
	inflight map[index.Fingerprint]int

	// tmpMu guards liveTmp, the temporary files of open writers, which the
	// sweep must leave alone.
	tmpMu   sync.Mutex
	liveTmp map[string]struct{}

	// exclusive is held shared by every mutation and exclusively by fsck,
	// which must see the blobs and the index at rest.
	exclusive sync.RWMutex

	watchMu   sync.Mutex
	watchers  map[int]func(scope, key string) // replaced, never mutated
	nextWatch int

	// durability is the order that makes a new blob's name durable,
	// chosen for the store's filesystem at Open (durable.go).
	durability nameDurability

	counters  Counters
	tracked   map[string]bool
	readsMu   sync.Mutex
	reads     map[string]int64 // "scope/key" -> opens, for tracked scopes
	closed    atomic.Bool
	sweepDone chan struct{}
}

// Counters are the store's running totals since it was opened.
type Counters struct {
	Hits           atomic.Int64 // reads served from the LRU
	Misses         atomic.Int64 // reads that went to the blob file
	VerifyFailures atomic.Int64 // reads refused because the fingerprint did not match
	QuotaRejects   atomic.Int64 // writes refused by a quota
}

const (
	lockName        = "lock"
	indexName       = "index.db"
	blobsDir        = "blobs"
	tmpDir          = "tmp"
	quarantineDir   = "quarantine"
	tmpSuffix       = ".tmp"
	defaultHot      = 32 << 20
	defaultHotItem  = 1 << 20
	defaultHotFirst = 8 << 20
)

// Open opens (creating if needed) the store in dir. It takes the store's
// lock, so a second opener fails with ErrLocked naming the holder's pid;
// removes temporary files of interrupted writes; and starts a background
// sweep of blob files that no entry references.
func Open(dir string, opts Options) (*Store, error) {
	if opts.Policy == nil {
		opts.Policy = quota.Default()
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.HotBytes == 0 {
		opts.HotBytes = defaultHot
	}
	if opts.HotEntryMax == 0 {
		opts.HotEntryMax = defaultHotItem
	}
	if opts.HotFirstBytes == 0 {
		opts.HotFirstBytes = defaultHotFirst
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("store %s: %w", abs, err)
	}
	lock, err := acquireLock(filepath.Join(abs, lockName))
	if err != nil {
		return nil, fmt.Errorf("store %s: %w", abs, err)
	}
	s := &Store{
		dir:       abs,
		policy:    opts.Policy,
		now:       opts.Now,
		log:       opts.Logger,
		lock:      lock,
		hot:       newHotTiers(opts),
		verified:  newVerifiedFiles(),
		inflight:  map[index.Fingerprint]int{},
		liveTmp:   map[string]struct{}{},
		sweepDone: make(chan struct{}),
		tracked:   map[string]bool{},
		reads:     map[string]int64{},
	}
	for _, sc := range opts.TrackReads {
		s.tracked[sc] = true
	}
	if err := s.prepareLayout(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("store %s: %w", abs, err)
	}
	s.durability = detectNameDurability(filepath.Join(abs, blobsDir))
	if err := s.checkIndexPresent(); err != nil {
		lock.Close()
		return nil, fmt.Errorf("store %s: %w: run 'iriskvfs fsck --repair' to rebuild it", abs, err)
	}
	db, err := index.OpenWith(filepath.Join(abs, indexName), opts.Policy.Names(), index.Options{
		Replay:            s.replayValues,
		Sync:              s.syncValues,
		CheckpointChanges: opts.CheckpointChanges,
	})
	if errors.Is(err, index.ErrDamaged) {
		lock.Close()
		return nil, fmt.Errorf("store %s: %w: run 'iriskvfs fsck --repair' to rebuild it", abs, err)
	}
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("store %s: index: %w", abs, err)
	}
	s.db = db
	go func() {
		defer close(s.sweepDone)
		// The sweep deletes the files the index does not reference: only
		// once the whole index has been read and found sound (damage that
		// Open's checks do not reach).
		err := s.db.Verify(s.closed.Load)
		if err != nil {
			s.log.Error("the index is damaged: orphan sweep skipped", "err", err,
				"fix", "stop the daemon, then run 'iriskvfs fsck --repair'")
		}
		if err != nil || s.closed.Load() {
			return
		}
		if _, err := s.sweepOrphans(); err != nil {
			s.log.Warn("orphan sweep failed", "err", err)
		}
		// The sweep looked up every blob's reference count: give back the
		// index pages it mapped in (tens of MB for 100k keys).
		s.releaseIndexPages()
	}()
	return s, nil
}

// checkIndexPresent refuses a store whose index file is missing or empty
// while it holds value files: opening it would start an empty index, and
// the orphan sweep would then delete every value. Only a new store (or one
// that crashed while creating its index) has neither.
func (s *Store) checkIndexPresent() error {
	path := filepath.Join(s.dir, indexName)
	fi, err := os.Stat(path)
	var what string
	switch {
	case errors.Is(err, os.ErrNotExist):
		what = "missing"
	case err != nil:
		return err
	case fi.Size() == 0:
		what = "empty"
	default:
		return nil
	}
	n, err := s.countBlobs(1)
	if err != nil || n == 0 {
		return err
	}
	return &index.DamagedError{Path: path, Reason: what + ", but the store holds value files"}
}

// countBlobs counts blob files, stopping at limit (0: no limit).
func (s *Store) countBlobs(limit int) (int, error) {
	n := 0
	for i := 0; i < 256; i++ {
		names, err := readDirNames(filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", i)))
		if err != nil {
			return n, err
		}
		for _, name := range names {
			if _, ok := parseBlobName(name); ok {
				if n++; limit > 0 && n >= limit {
					return n, nil
				}
			}
		}
	}
	return n, nil
}

// prepareLayout creates the directories and removes what interrupted writes
// left in tmp/ (no writer can be live: we hold the lock and have none yet).
func (s *Store) prepareLayout() error {
	for _, d := range []string{tmpDir, quarantineDir} {
		if err := os.MkdirAll(filepath.Join(s.dir, d), 0o700); err != nil {
			return err
		}
	}
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", i)), 0o700); err != nil {
			return err
		}
	}
	names, err := readDirNames(filepath.Join(s.dir, tmpDir))
	if err != nil {
		return err
	}
	for _, n := range names {
		if err := os.RemoveAll(filepath.Join(s.dir, tmpDir, n)); err != nil {
			return err
		}
	}
	return nil
}

// Close waits for background work, then closes the index and releases the
// lock. Values being written are abandoned.
func (s *Store) Close() error {
	if s.closed.Swap(true) {
		return nil
	}
	<-s.sweepDone
	err := s.db.Close()
	if lerr := s.lock.Close(); err == nil {
		err = lerr
	}
	return err
}

// NameDurability says how a put makes a new blob's name durable on this
// store's filesystem (for the daemon's log).
func (s *Store) NameDurability() string { return s.durability.String() }

// Dir is the store directory.
func (s *Store) Dir() string { return s.dir }

// Policy is the store's scope policy.
func (s *Store) Policy() *quota.Policy { return s.policy }

// Now is the store's clock.
func (s *Store) Now() time.Time { return s.now() }

// Counters are the running totals of reads and rejections.
func (s *Store) Counters() *Counters { return &s.counters }

func (s *Store) scope(name string) (quota.Scope, error) {
	sc, ok := s.policy.Scope(name)
	if !ok {
		return quota.Scope{}, fmt.Errorf("%w %q (scopes: %s)", ErrBadScope, name, strings.Join(s.policy.Names(), ", "))
	}
	return sc, nil
}

// checkAddress validates a scope and key before anything touches storage.
func (s *Store) checkAddress(scope, key string) (quota.Scope, error) {
	if s.closed.Load() {
		return quota.Scope{}, ErrClosed
	}
	sc, err := s.scope(scope)
	if err != nil {
		return sc, err
	}
	return sc, ValidateKey(key)
}

// BlobPath is where the value with fingerprint fp lives. Operators may read
// it; only the store writes it.
func (s *Store) BlobPath(fp index.Fingerprint) string {
	h := hex.EncodeToString(fp[:])
	return filepath.Join(s.dir, blobsDir, h[:2], h)
}

func (s *Store) blobDir(fp index.Fingerprint) string {
	return filepath.Join(s.dir, blobsDir, hex.EncodeToString(fp[:1]))
}

// removeBlobs deletes the blobs of fps that are unreferenced and not being
// written. Called after the commit that dropped their last reference; a crash
// before it leaves orphans, which the next open sweeps.
func (s *Store) removeBlobs(fps []index.Fingerprint) {
	if len(fps) == 0 {
		return
	}
	s.blobMu.Lock()
	defer s.blobMu.Unlock()
	var dead []index.Fingerprint
	_ = s.db.View(func(tx *index.Tx) error {
		for _, fp := range fps {
			if s.inflight[fp] == 0 && tx.Refs(fp) == 0 {
				dead = append(dead, fp)
			}
		}
		return nil
	})
	for _, fp := range dead {
		if err := os.Remove(s.BlobPath(fp)); err != nil && !errors.Is(err, os.ErrNotExist) {
			s.log.Warn("cannot remove unreferenced blob", "fingerprint", hex.EncodeToString(fp[:]), "err", err)
		}
		s.hot.remove(fp)
		s.verified.forget(fp)
	}
}

// sweepOrphans removes blob files no entry references and temporary files
// no live writer owns. It returns how many files it removed.
func (s *Store) sweepOrphans() (int, error) {
	removed := 0
	for i := 0; i < 256; i++ {
		if s.closed.Load() {
			return removed, nil
		}
		dir := filepath.Join(s.dir, blobsDir, fmt.Sprintf("%02x", i))
		names, err := readDirNames(dir)
		if err != nil {
			return removed, err
		}
		var cands []index.Fingerprint
		for _, n := range names {
			fp, ok := parseBlobName(n)
			if !ok {
				if s.removeStray(filepath.Join(dir, n)) {
					removed++
				}
				continue
			}
			cands = append(cands, fp)
		}
		if len(cands) == 0 {
			continue
		}
		s.blobMu.Lock()
		var dead []index.Fingerprint
		_ = s.db.View(func(tx *index.Tx) error {
			for j, fp := range cands {
				if s.inflight[fp] == 0 && tx.Refs(fp) == 0 {
					dead = append(dead, fp)
				}
				if j%256 == 255 {
					// Random lookups: each maps in pages of its own.
					tx.ReleasePages()
				}
			}
			tx.ReleasePages()
			return nil
		})
		for _, fp := range dead {
			if err := os.Remove(s.BlobPath(fp)); err == nil {
				removed++
			}
		}
		s.blobMu.Unlock()
	}
	names, err := readDirNames(filepath.Join(s.dir, tmpDir))
	if err != nil {
		return removed, err
	}
	s.tmpMu.Lock()
	defer s.tmpMu.Unlock()
	for _, n := range names {
		if _, live := s.liveTmp[n]; !live {
			if s.removeStray(filepath.Join(s.dir, tmpDir, n)) {
				removed++
			}
		}
	}
	return removed, nil
}

func (s *Store) removeStray(path string) bool {
	if err := os.RemoveAll(path); err != nil {
		s.log.Warn("cannot remove stray file", "path", path, "err", err)
		return false
	}
	return true
}

func parseBlobName(name string) (index.Fingerprint, bool) {
	var fp index.Fingerprint
	if len(name) != 2*index.FingerprintSize || strings.ToLower(name) != name {
		return fp, false
	}
	if _, err := hex.Decode(fp[:], []byte(name)); err != nil {
		return fp, false
	}
	return fp, true
}

func readDirNames(dir string) ([]string, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	names, err := f.Readdirnames(-1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return names, nil
}

// syncDir makes a rename or unlink in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// releaseAfterScan is the number of entries past which a scan of a scope
// gives back the index pages it mapped in (see releaseIndexPages): some
// 400 bytes of index per key, so 4096 keys are about 1.6 MB.
const releaseAfterScan = 4096

// releaseIndexPages drops the index file's pages from the process's
// resident memory after a large scan (index.DB.ReleasePages): a listing of
// 100k keys maps ~45 MB of index.db, which would otherwise count in the
// daemon's RSS until the kernel reclaims it. The pages stay in the page
// cache, so the next access costs a minor fault, not a read.
func (s *Store) releaseIndexPages() {
	if s.closed.Load() {
		return
	}
	if err := s.db.ReleasePages(); err != nil {
		s.log.Debug("cannot release the index's pages", "err", err)
	}
}
