package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Top-level buckets. Scope buckets are nested under bucketScopes so that no
// scope name can collide with the index's own buckets.
var (
	bucketMeta   = []byte("meta")
	bucketScopes = []byte("scopes")
	bucketUsage  = []byte("usage")  // scope -> bytes(8) keys(8)
	bucketRefs   = []byte("refs")   // fingerprint -> uvarint count of entries using it
	bucketExpiry = []byte("expiry") // expiresAt(8, big endian) scope 0 key -> empty
	keyFormat    = []byte("format")
)

// formatVersion is written by this version. "2" has a journal
// (journal.go): an index of format "1" is upgraded when opened, and a
// version that knows only "1" refuses a "2", whose latest commits it would
// not see.
const formatVersion = "2"

// readableVersions are the formats this version opens.
var readableVersions = []string{"1", "2"}

// ErrFormat reports an index that was not written by this version.
var ErrFormat = errors.New("index format not recognised")

// DB is an open index.
type DB struct {
	bolt *bolt.DB
	path string

	touches atomic.Int64  // transactions since the last ReleasePages, weighed (see touched)
	mapped  mappingLength // the length of bbolt's mapping, for ReleasePages

	// Group commit (see Batch).
	batchMu sync.Mutex
	queue   []*batchCall
	leading bool

	opts Options
	// commitMu is held by whoever changes the index: the batch leader
	// (journaled commits), Update, a checkpoint.
	commitMu sync.Mutex
	j        *journal
	// needJournal: none exists yet, the first journaled commit makes it.
	needJournal bool
	journalID   [16]byte
	ov          atomic.Pointer[overlay] // journaled changes not in bbolt yet
	// epoch moves before every bbolt commit: a reader pairs an overlay
	// with a bbolt transaction only if none began in between (View).
	epoch atomic.Uint64

	// A checkpoint started in the background (journaled).
	bg        sync.WaitGroup
	bgRunning atomic.Bool

	// Journal counters, for the store's statistics.
	JournalCommits atomic.Int64
	Checkpoints    atomic.Int64
}

// Options are what the store tells the index about its files.
type Options struct {
	// Replay is given the attachments of each journal record replayed when
	// the index is opened (Tx.Attach), oldest first, before the record's
	// changes are applied. A failure fails the open.
	Replay func(attach [][]byte) error
	// Sync makes durable what attachments stood for (the store's value
	// files). A checkpoint calls it before the journal stops holding them,
	// and a commit with attachments that is too large for the journal
	// calls it before its bbolt commit.
	Sync func() error
	// CheckpointChanges is how many journaled changes the overlay holds
	// before a checkpoint moves them into bbolt (0: the default).
	CheckpointChanges int
}

// defaultCheckpointChanges bounds the overlay (and a replay): a small put
// makes 3 or 4 changes.
const defaultCheckpointChanges = 2048

type batchCall struct {
	fn   func(*Tx) error
	done chan error    // the call's result
	lead chan struct{} // this caller is to run the next batch
}

// Open opens or creates the index at path and makes sure the given scopes
// have buckets. A file that is not a readable bbolt database, or is shorter
// than its own metadata says, fails with a *DamagedError (errors.Is
// ErrDamaged), never a panic.
func Open(path string, scopes []string) (*DB, error) {
	return OpenWith(path, scopes, Options{})
}

// OpenWith is Open with the store's options. It replays the journal: the
// commits a crash left there are in the index when it returns.
func OpenWith(path string, scopes []string, opts Options) (*DB, error) {
	if opts.CheckpointChanges <= 0 {
		opts.CheckpointChanges = defaultCheckpointChanges
	}
	b, err := openBolt(path, &bolt.Options{
		Timeout: time.Second,
		// The freelist is synced with each commit: without it every open
		// walks the whole file to rebuild it (0.4 s for 100k keys with a
		// cold page cache, against about 1 ms), for a commit ~10% cheaper.
		NoFreelistSync: false,
		FreelistType:   bolt.FreelistMapType,
	})
	if err != nil {
		return nil, err
	}
	db := &DB{bolt: b, path: path, opts: opts}
	var jid [16]byte
	err = db.Update(func(t *Tx) error {
		tx := t.tx
		if err := checkSize(path, tx); err != nil {
			return err
		}
		meta, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		switch v := meta.Get(keyFormat); {
		case v != nil && !slices.Contains(readableVersions, string(v)):
			return fmt.Errorf("%w: version %q", ErrFormat, v)
		case string(v) != formatVersion:
			if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
				return err
			}
		}
		if v := meta.Get(keyJournalID); len(v) == len(jid) {
			copy(jid[:], v)
		} else {
			id, err := newJournalID()
			if err != nil {
				return err
			}
			jid = id
			if err := meta.Put(keyJournalID, id[:]); err != nil {
				return err
			}
		}
		for _, name := range [][]byte{bucketScopes, bucketUsage, bucketRefs, bucketExpiry} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return err
			}
		}
		sb := tx.Bucket(bucketScopes)
		for _, s := range scopes {
			if _, err := sb.CreateBucketIfNotExists([]byte(s)); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		_ = guard(path, b.Close)
		return nil, err
	}
	if err := db.openJournal(jid); err != nil {
		_ = guard(path, b.Close)
		return nil, err
	}
	return db, nil
}

// openJournal opens the journal and replays it into bbolt.
// A missing journal is made by the first commit that needs one
// (ensureJournal): an index only read never has one.
func (db *DB) openJournal(id [16]byte) error {
	db.journalID = id
	j, recs, err := openJournal(journalPath(db.path), id, false)
	if err != nil {
		return fmt.Errorf("index journal: %w", err)
	}
	if j == nil {
		db.needJournal = true
		return nil
	}
	if len(recs) > 0 {
		all := make([]changes, 0, len(recs))
		attached := false
		for i, body := range recs {
			c, attach, err := decodeRecord(body)
			if err != nil {
				// The CRC matched: this version wrote something it cannot
				// read back. Refuse rather than lose the rest.
				j.f.Close()
				return fmt.Errorf("index journal: record %d: %w", i, err)
			}
			if len(attach) > 0 && db.opts.Replay != nil {
				attached = true
				if err := db.opts.Replay(attach); err != nil {
					j.f.Close()
					return fmt.Errorf("index journal: replaying record %d: %w", i, err)
				}
			}
			all = append(all, c)
		}
		var err error
		if attached && db.opts.Sync != nil {
			// The replay empties the journal, as a checkpoint does: the
			// files its records stood for must be durable first, those
			// found whole (a kill leaves them in the page cache, unsynced)
			// as much as those Replay wrote again.
			err = db.opts.Sync()
		}
		if err == nil {
			err = guard(db.path, func() error {
				return db.bolt.Update(func(tx *bolt.Tx) error {
					for _, c := range all {
						if err := apply(tx, c); err != nil {
							return err
						}
					}
					return nil
				})
			})
		}
		if err == nil {
			err = j.reset()
		}
		if err != nil {
			j.f.Close()
			return fmt.Errorf("index journal: replay: %w", err)
		}
	}
	db.j = j
	return nil
}

// ensureJournal makes the journal, once, for the first journaled commit
// (commitMu held). Where it cannot be made (no room for journalSize, a
// read-only directory), commits go on without one, each synced in bbolt,
// as before journals.
func (db *DB) ensureJournal() {
	if !db.needJournal {
		return
	}
	db.needJournal = false
	j, _, err := openJournal(journalPath(db.path), db.journalID, true)
	if err != nil {
		_ = os.Remove(journalPath(db.path))
		return
	}
	db.j = j
}

// Checkpoint moves the journaled changes into bbolt and empties the
// journal.
func (db *DB) Checkpoint() error {
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	return db.checkpoint()
}

// checkpoint is Checkpoint with commitMu held. The overlay is dropped only
// once bbolt has its changes: a reader meanwhile sees them in either.
func (db *DB) checkpoint() error {
	ov := db.ov.Load()
	if ov == nil || db.j == nil {
		return nil
	}
	if db.opts.Sync != nil {
		if err := db.opts.Sync(); err != nil {
			return err
		}
	}
	c := ov.final()
	db.epoch.Add(1)
	err := guard(db.path, func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error { return apply(tx, c) })
	})
	if err != nil {
		return err
	}
	db.touched(releaseAfter)
	if err := db.j.reset(); err != nil {
		return err
	}
	db.ov.Store(nil)
	db.Checkpoints.Add(1)
	return nil
}

// openBolt opens the bbolt file at path. A file bbolt refuses (not a bbolt
// file, bad checksums) or panics on fails with a *DamagedError; after a
// panic the file is unlocked and closed here, as bbolt cannot, so that the
// next open (fsck --repair's) is not locked out by this one.
func openBolt(path string, o *bolt.Options) (*bolt.DB, error) {
	var file *os.File
	o.OpenFile = func(name string, flag int, perm os.FileMode) (*os.File, error) {
		f, err := os.OpenFile(name, flag, perm)
		file = f
		return f, err
	}
	var b *bolt.DB
	err := guard(path, func() error {
		var err error
		b, err = bolt.Open(path, 0o600, o)
		if errors.Is(err, berrors.ErrInvalid) || errors.Is(err, berrors.ErrVersionMismatch) ||
			errors.Is(err, berrors.ErrChecksum) || err != nil && strings.Contains(err.Error(), "file size too small") {
			// Not a bbolt file, unreadable meta pages, a file cut short.
			err = &DamagedError{Path: path, Reason: err.Error()}
		}
		return err
	})
	if errors.Is(err, ErrDamaged) && b == nil && file != nil {
		// bbolt panicked with the file open, locked and mapped. The map
		// (left in place: its address is bbolt's) keeps the file and so its
		// lock alive after a close: unlock it first.
		_ = syscall.Flock(int(file.Fd()), syscall.LOCK_UN)
		file.Close()
	}
	return b, err
}

// checkSize fails when the file is shorter than the pages its metadata
// counts: a truncated file, whose missing pages would fault when read.
func checkSize(path string, tx *bolt.Tx) error {
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if fi.Size() < tx.Size() {
		return &DamagedError{Path: path, Reason: fmt.Sprintf("truncated: %d bytes, its pages need %d", fi.Size(), tx.Size())}
	}
	return nil
}

// Close closes the index.
func (db *DB) Close() error {
	db.bg.Wait()
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	err := db.checkpoint()
	if db.j != nil {
		if cerr := db.j.f.Close(); err == nil {
			err = cerr
		}
		db.j = nil
	}
	if cerr := guard(db.path, db.bolt.Close); err == nil {
		err = cerr
	}
	return err
}

// Path is the index file.
func (db *DB) Path() string { return db.path }

// View runs fn in a read-only transaction. A damaged page met on the way
// fails it with a *DamagedError instead of a panic (see guard).
func (db *DB) View(fn func(*Tx) error) error {
	var err error
	for {
		err = guard(db.path, func() error {
			// The overlay, then the bbolt transaction, with no bbolt
			// commit begun in between: a checkpoint that ran between them
			// leaves the overlay's changes in both (harmless), but a
			// later commit would leave bbolt newer than the overlay that
			// shadows it.
			e := db.epoch.Load()
			ov := db.ov.Load()
			tx, err := db.bolt.Begin(false)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if db.epoch.Load() != e {
				return errRetryView
			}
			return fn(&Tx{tx: tx, db: db, ov: ov})
		})
		if err != errRetryView {
			break
		}
	}
	db.touched(1)
	return err
}

// Update runs fn in a read-write bbolt transaction, committed (and synced)
// when fn returns nil, after a checkpoint: for the rare changes that are
// large or need the whole of bbolt (prune, clear, fsck, rebuild). A damaged
// page fails it as in View.
func (db *DB) Update(fn func(*Tx) error) error {
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	if err := db.checkpoint(); err != nil {
		return err
	}
	return db.update(fn)
}

func (db *DB) update(fn func(*Tx) error) error {
	db.epoch.Add(1)
	err := guard(db.path, func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error {
			t := &Tx{tx: tx, db: db}
			if err := fn(t); err != nil {
				return err
			}
			if len(t.attach) > 0 && db.opts.Sync != nil {
				return db.opts.Sync()
			}
			return nil
		})
	})
	db.touched(releaseAfter)
	return err
}

// journaled runs fn against bbolt and the overlay, and commits what it
// changed through the journal: one write and one fdatasync. commitMu is
// held. A commit too large for the journal is written into bbolt after a
// checkpoint instead.
func (db *DB) journaled(fn func(*Tx) error) error {
	db.ensureJournal()
	if db.j == nil {
		return db.update(fn)
	}
	var t *Tx
	err := guard(db.path, func() error {
		btx, err := db.bolt.Begin(false)
		if err != nil {
			return err
		}
		defer btx.Rollback()
		t = &Tx{tx: btx, db: db, ov: db.ov.Load(), w: changes{}}
		return fn(t)
	})
	db.touched(1)
	if err != nil || len(t.w) == 0 {
		return err
	}
	body := encodeRecord(t.w, t.attach)
	if !fitsEmpty(len(body)) {
		if err := db.checkpoint(); err != nil {
			return err
		}
		if len(t.attach) > 0 && db.opts.Sync != nil {
			if err := db.opts.Sync(); err != nil {
				return err
			}
		}
		db.epoch.Add(1)
		err := guard(db.path, func() error {
			return db.bolt.Update(func(tx *bolt.Tx) error { return apply(tx, t.w) })
		})
		db.touched(releaseAfter)
		return err
	}
	if !db.j.fits(len(body)) {
		if err := db.checkpoint(); err != nil {
			return err
		}
	}
	if err := db.j.append(body); err != nil {
		return err
	}
	ov := db.ov.Load().with(t.w)
	db.ov.Store(ov)
	db.JournalCommits.Add(1)
	switch {
	case ov.n >= db.opts.CheckpointChanges:
		// The commit is durable and published; a failed checkpoint
		// leaves it in the journal, to be tried again.
		_ = db.checkpoint()
	case (ov.n >= db.opts.CheckpointChanges/2 || db.j.off >= journalSize/2) && db.opts.Sync != nil && db.bgRunning.CompareAndSwap(false, true):
		// Half full (the overlay, or the journal: a few large values
		// fill it long before the overlay): checkpoint in the
		// background, its slow part (the sync of every file written
		// since the last one) before it takes the commit lock, so that
		// writers seldom wait for a checkpoint.
		db.bg.Add(1)
		go func() {
			defer db.bg.Done()
			defer db.bgRunning.Store(false)
			if db.opts.Sync() == nil {
				_ = db.Checkpoint()
			}
		}()
	}
	return nil
}

// touched counts what a transaction may have mapped in (a commit: its
// path through each tree it changed, the old freelist; a read: a lookup's
// path), and gives the pages back (ReleasePages) once it adds up to
// releaseAfter. Every page fault on the map maps the 16 pages around it
// too (the kernel's fault-around), so a commit adds some 800 KB to the
// daemon's RSS, a lookup some 30 KB: 10,000 small puts left 35 MB of a
// 50 MB index.db resident, and the lookups of a day's reads would map the
// rest. A release takes about 10 µs (against about 1.5 ms for a durable
// commit): after every commit, and after every 32 reads.
func (db *DB) touched(weight int64) {
	if db.touches.Add(weight) >= releaseAfter {
		db.touches.Store(0)
		_ = db.ReleasePages()
	}
}

const releaseAfter = 32

// Batch is Update for concurrent writers: calls that arrive while a commit
// is running share the next one (group commit), so N writers pay for about
// one fsync each round, and a lone writer commits at once (bbolt's own Batch
// waits 10 ms for company). fn may run more than once and must not have
// effects outside the transaction.
func (db *DB) Batch(fn func(*Tx) error) error {
	c := &batchCall{fn: fn, done: make(chan error, 1), lead: make(chan struct{}, 1)}
	db.batchMu.Lock()
	db.queue = append(db.queue, c)
	if db.leading {
		db.batchMu.Unlock()
		select {
		case err := <-c.done:
			return err
		case <-c.lead: // our turn: c is at the head of the queue
		}
		db.batchMu.Lock()
	}
	db.leading = true
	calls := db.queue
	db.queue = nil
	db.batchMu.Unlock()

	db.runBatch(calls)

	db.batchMu.Lock()
	if len(db.queue) > 0 {
		db.queue[0].lead <- struct{}{}
	} else {
		db.leading = false
	}
	db.batchMu.Unlock()
	return <-c.done
}

// runBatch commits calls in one transaction. A call that fails is run
// again alone, so its error is its own and the others still commit.
func (db *DB) runBatch(calls []*batchCall) {
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	for len(calls) > 0 {
		failed := -1
		err := db.journaled(func(tx *Tx) error {
			for i, c := range calls {
				if err := c.fn(tx); err != nil {
					failed = i
					return err
				}
			}
			return nil
		})
		if failed < 0 || errors.Is(err, ErrDamaged) {
			// Committed, or the index failed under all of them.
			for _, c := range calls {
				c.done <- err
			}
			return
		}
		c := calls[failed]
		c.done <- db.journaled(c.fn)
		calls = append(calls[:failed:failed], calls[failed+1:]...)
	}
}

// Tx is an index transaction. Every change made through it keeps the
// entries, usage, reference counts and expiry index consistent.
//
// It reads bbolt through the overlay of journaled changes (ov), and its own
// changes (w) when it is journaled; a direct transaction (Update) writes
// bbolt itself.
type Tx struct {
	tx     *bolt.Tx
	db     *DB
	ov     *overlay
	w      changes // nil: read-only, or direct
	attach [][]byte
}

// Attach adds b to the commit: the journal keeps it with the commit's
// changes, and a replay of the commit gives it to Options.Replay first. The
// store attaches a small value whose file it has not synced, so that one
// fdatasync makes the value and its entry durable. Where the commit does
// not go through the journal, Options.Sync runs before it instead.
func (t *Tx) Attach(b []byte) { t.attach = append(t.attach, b) }

// Usage is what a scope holds.
type Usage struct {
	Bytes int64
	Keys  int64
}

func errNoBucket(name string) error {
	if len(name) > len(bkScope) && name[:len(bkScope)] == bkScope {
		return fmt.Errorf("index: no bucket for scope %q", name[len(bkScope):])
	}
	return fmt.Errorf("index: no bucket %q", name)
}

// get is the value of key in bucket: this transaction's change, else the
// overlay's, else bbolt's. It is only valid during the transaction.
func (t *Tx) get(bucket string, key []byte) []byte {
	if c, ok := t.w[bucket][string(key)]; ok {
		return c.val
	}
	if c, ok := t.ov.lookup(bucket, key); ok {
		return c.val
	}
	if b := boltBucket(t.tx, bucket); b != nil {
		return b.Get(key)
	}
	return nil
}

func (t *Tx) put(bucket string, key, val []byte) error {
	if t.w != nil {
		t.w.set(bucket, key, val, false)
		return nil
	}
	b := boltBucket(t.tx, bucket)
	if b == nil {
		return errNoBucket(bucket)
	}
	return b.Put(key, val)
}

func (t *Tx) del(bucket string, key []byte) error {
	if t.w != nil {
		t.w.set(bucket, key, nil, true)
		return nil
	}
	b := boltBucket(t.tx, bucket)
	if b == nil {
		return errNoBucket(bucket)
	}
	return b.Delete(key)
}

// each calls fn for every key of bucket in order, as get sees them. k and
// v are only valid during the call; fn returning errStop ends the walk
// without an error. fn may change the bucket only in a journaled
// transaction (the walk reads bbolt, not the changes).
func (t *Tx) each(bucket string, fn func(k, v []byte) error) error {
	b := boltBucket(t.tx, bucket)
	if b == nil {
		return errNoBucket(bucket)
	}
	over := mergedChanges(t.ov, t.w, bucket)
	c := b.Cursor()
	k, v := c.First()
	i := 0
	for k != nil || i < len(over) {
		var err error
		switch {
		case i < len(over) && (k == nil || over[i].key <= string(k)):
			o := over[i]
			if k != nil && o.key == string(k) {
				k, v = c.Next()
			}
			i++
			if o.del {
				continue
			}
			err = fn([]byte(o.key), o.val)
		default:
			err = fn(k, v)
			k, v = c.Next()
		}
		if err == errStop {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return nil
}

var (
	errStop      = errors.New("stop")
	errRetryView = errors.New("a bbolt commit began while the view was opened")
)

func (t *Tx) scope(scope string) (string, error) {
	name := scopeBucket(scope)
	if boltBucket(t.tx, name) == nil {
		return "", errNoBucket(name)
	}
	return name, nil
}

// Scopes lists the scope buckets present in the index.
func (t *Tx) Scopes() []string {
	var out []string
	t.tx.Bucket(bucketScopes).ForEachBucket(func(k []byte) error {
		out = append(out, string(k))
		return nil
	})
	return out
}

// Get returns the entry of scope/key, expired or not.
func (t *Tx) Get(scope, key string) (Entry, bool, error) {
	b, err := t.scope(scope)
	if err != nil {
		return Entry{}, false, err
	}
	v := t.get(b, []byte(key))
	if v == nil {
		return Entry{}, false, nil
	}
	e := Entry{Scope: scope, Key: key}
	if err := e.Decode(v); err != nil {
		return Entry{}, false, fmt.Errorf("%s/%s: %w", scope, key, err)
	}
	return e, true, nil
}

// Put stores e under e.Scope/e.Key and returns the entry it replaced.
func (t *Tx) Put(e Entry) (old Entry, replaced bool, err error) {
	b, err := t.scope(e.Scope)
	if err != nil {
		return Entry{}, false, err
	}
	old, replaced, err = t.Get(e.Scope, e.Key)
	if err != nil {
		return Entry{}, false, err
	}
	if err := t.put(b, []byte(e.Key), e.Encode()); err != nil {
		return Entry{}, false, err
	}
	u := t.Usage(e.Scope)
	if replaced {
		if err := t.unaccount(&old, &u); err != nil {
			return Entry{}, false, err
		}
	}
	u.Bytes += e.Size
	u.Keys++
	if err := t.addRef(e.Fingerprint, 1); err != nil {
		return Entry{}, false, err
	}
	if !e.ExpiresAt.IsZero() {
		if err := t.put(bkExpiry, expiryKey(e.ExpiresAt, e.Scope, e.Key), nil); err != nil {
			return Entry{}, false, err
		}
	}
	return old, replaced, t.SetUsage(e.Scope, u)
}

// SetMeta rewrites the record of an existing entry whose size and
// fingerprint are unchanged (xattrs, chmod, touch, TTL changes).
func (t *Tx) SetMeta(e Entry) error {
	old, ok, err := t.Get(e.Scope, e.Key)
	if err != nil {
		return err
	}
	if !ok || old.Size != e.Size || old.Fingerprint != e.Fingerprint {
		return fmt.Errorf("index: SetMeta of %s/%s would change its value", e.Scope, e.Key)
	}
	b, _ := t.scope(e.Scope)
	if err := t.put(b, []byte(e.Key), e.Encode()); err != nil {
		return err
	}
	if !old.ExpiresAt.Equal(e.ExpiresAt) {
		if !old.ExpiresAt.IsZero() {
			if err := t.del(bkExpiry, expiryKey(old.ExpiresAt, old.Scope, old.Key)); err != nil {
				return err
			}
		}
		if !e.ExpiresAt.IsZero() {
			if err := t.put(bkExpiry, expiryKey(e.ExpiresAt, e.Scope, e.Key), nil); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete removes scope/key and returns the removed entry.
func (t *Tx) Delete(scope, key string) (Entry, bool, error) {
	old, ok, err := t.Get(scope, key)
	if err != nil || !ok {
		return old, ok, err
	}
	b, _ := t.scope(scope)
	if err := t.del(b, []byte(key)); err != nil {
		return Entry{}, false, err
	}
	u := t.Usage(scope)
	if err := t.unaccount(&old, &u); err != nil {
		return Entry{}, false, err
	}
	return old, true, t.SetUsage(scope, u)
}

// unaccount removes the derived state of an entry that is going away.
func (t *Tx) unaccount(old *Entry, u *Usage) error {
	u.Bytes -= old.Size
	u.Keys--
	if !old.ExpiresAt.IsZero() {
		if err := t.del(bkExpiry, expiryKey(old.ExpiresAt, old.Scope, old.Key)); err != nil {
			return err
		}
	}
	return t.addRef(old.Fingerprint, -1)
}

// ForEach calls fn for every entry of scope in key order, expired or not.
// The entry is reused: it is only valid during the call (copy it to keep it).
func (t *Tx) ForEach(scope string, fn func(*Entry) error) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	var e Entry
	n := 0
	return t.each(b, func(k, v []byte) error {
		if n++; n%releaseEvery == 0 {
			t.ReleasePages()
		}
		e = Entry{Scope: scope, Key: string(k)}
		if err := e.Decode(v); err != nil {
			return fmt.Errorf("%s/%s: %w", scope, k, err)
		}
		return fn(&e)
	})
}

// ForEachRaw calls fn with every record of scope, undecoded: fsck uses it
// to find records that do not decode.
func (t *Tx) ForEachRaw(scope string, fn func(key string, record []byte) error) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	return t.each(b, func(k, v []byte) error { return fn(string(k), v) })
}

// DeleteRaw removes a record without touching derived state (for records
// that cannot be decoded; fsck recomputes the derived state afterwards).
func (t *Tx) DeleteRaw(scope, key string) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	return t.del(b, []byte(key))
}

// Usage returns the usage counters of scope.
func (t *Tx) Usage(scope string) Usage {
	v := t.get(bkUsage, []byte(scope))
	if len(v) != 16 {
		return Usage{}
	}
	return Usage{
		Bytes: int64(binary.BigEndian.Uint64(v[:8])),
		Keys:  int64(binary.BigEndian.Uint64(v[8:])),
	}
}

// SetUsage overwrites the usage counters of scope.
func (t *Tx) SetUsage(scope string, u Usage) error {
	var v [16]byte
	binary.BigEndian.PutUint64(v[:8], uint64(u.Bytes))
	binary.BigEndian.PutUint64(v[8:], uint64(u.Keys))
	return t.put(bkUsage, []byte(scope), v[:])
}

// Refs returns how many entries use the blob fp.
func (t *Tx) Refs(fp Fingerprint) uint64 {
	v := t.get(bkRefs, fp[:])
	n, _ := binary.Uvarint(v)
	return n
}

// ForEachRef calls fn for every fingerprint with a reference count.
func (t *Tx) ForEachRef(fn func(fp Fingerprint, n uint64) error) error {
	return t.each(bkRefs, func(k, v []byte) error {
		var fp Fingerprint
		copy(fp[:], k)
		n, _ := binary.Uvarint(v)
		return fn(fp, n)
	})
}

// SetRefs overwrites the reference count of fp (0 removes it).
func (t *Tx) SetRefs(fp Fingerprint, n uint64) error {
	if n == 0 {
		return t.del(bkRefs, fp[:])
	}
	return t.put(bkRefs, fp[:], binary.AppendUvarint(nil, n))
}

func (t *Tx) addRef(fp Fingerprint, delta int64) error {
	n := int64(t.Refs(fp)) + delta
	if n < 0 {
		n = 0
	}
	return t.SetRefs(fp, uint64(n))
}

// Expired calls fn for every indexed entry whose expiry is at or before
// now, oldest first. fn may delete the entry it is given.
func (t *Tx) Expired(now time.Time, fn func(scope, key string) error) error {
	var todo [][2]string
	limit := expiryPrefix(now)
	err := t.each(bkExpiry, func(k, _ []byte) error {
		if len(k) < 8 || bytes.Compare(k[:8], limit) > 0 {
			return errStop
		}
		if scope, key, ok := splitExpiryKey(k); ok {
			todo = append(todo, [2]string{scope, key})
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, sk := range todo {
		if err := fn(sk[0], sk[1]); err != nil {
			return err
		}
	}
	return nil
}

// ClearExpiry empties the expiry index (fsck rebuilds it from the entries).
// Only in Update.
func (t *Tx) ClearExpiry() error {
	if err := t.direct("ClearExpiry"); err != nil {
		return err
	}
	if err := t.tx.DeleteBucket(bucketExpiry); err != nil {
		return err
	}
	_, err := t.tx.CreateBucket(bucketExpiry)
	return err
}

// ClearRefs empties the reference counts (fsck rebuilds them). Only in
// Update.
func (t *Tx) ClearRefs() error {
	if err := t.direct("ClearRefs"); err != nil {
		return err
	}
	if err := t.tx.DeleteBucket(bucketRefs); err != nil {
		return err
	}
	_, err := t.tx.CreateBucket(bucketRefs)
	return err
}

// direct refuses an operation on whole buckets outside Update, where it
// would bypass the overlay.
func (t *Tx) direct(op string) error {
	if t.w != nil || t.ov != nil || !t.tx.Writable() {
		return fmt.Errorf("index: %s outside Update", op)
	}
	return nil
}

// IndexExpiry adds e to the expiry index (fsck's rebuild).
func (t *Tx) IndexExpiry(e *Entry) error {
	if e.ExpiresAt.IsZero() {
		return nil
	}
	return t.put(bkExpiry, expiryKey(e.ExpiresAt, e.Scope, e.Key), nil)
}

// ExpiryIndexSize is the number of entries in the expiry index.
func (t *Tx) ExpiryIndexSize() int {
	n := 0
	_ = t.each(bkExpiry, func(_, _ []byte) error { n++; return nil })
	return n
}

func expiryPrefix(at time.Time) []byte {
	var p [8]byte
	ns := at.UnixNano()
	if ns < 0 {
		ns = 0
	}
	binary.BigEndian.PutUint64(p[:], uint64(ns))
	return p[:]
}

func expiryKey(at time.Time, scope, key string) []byte {
	k := make([]byte, 0, 8+len(scope)+1+len(key))
	k = append(k, expiryPrefix(at)...)
	k = append(k, scope...)
	k = append(k, 0)
	return append(k, key...)
}

func splitExpiryKey(k []byte) (scope, key string, ok bool) {
	if len(k) < 10 {
		return "", "", false
	}
	rest := k[8:]
	i := bytes.IndexByte(rest, 0)
	if i < 0 {
		return "", "", false
	}
	return string(rest[:i]), string(rest[i+1:]), true
}
