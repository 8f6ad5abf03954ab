package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
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

const formatVersion = "1"

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
}

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
	db := &DB{bolt: b, path: path}
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
		case v == nil:
			if err := meta.Put(keyFormat, []byte(formatVersion)); err != nil {
				return err
			}
		case string(v) != formatVersion:
			return fmt.Errorf("%w: version %q", ErrFormat, v)
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
	return db, nil
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
func (db *DB) Close() error { return guard(db.path, db.bolt.Close) }

// Path is the index file.
func (db *DB) Path() string { return db.path }

// View runs fn in a read-only transaction. A damaged page met on the way
// fails it with a *DamagedError instead of a panic (see guard).
func (db *DB) View(fn func(*Tx) error) error {
	err := guard(db.path, func() error {
		return db.bolt.View(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, db: db}) })
	})
	db.touched(1)
	return err
}

// Update runs fn in a read-write transaction, committed (and synced) when
// fn returns nil. A damaged page fails it as in View.
func (db *DB) Update(fn func(*Tx) error) error {
	err := guard(db.path, func() error {
		return db.bolt.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx, db: db}) })
	})
	db.touched(releaseAfter)
	return err
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
	for len(calls) > 0 {
		failed := -1
		err := db.Update(func(tx *Tx) error {
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
		c.done <- db.Update(c.fn)
		calls = append(calls[:failed:failed], calls[failed+1:]...)
	}
}

// Tx is an index transaction. Every change made through it keeps the
// entries, usage, reference counts and expiry index consistent.
type Tx struct {
	tx *bolt.Tx
	db *DB
}

// Usage is what a scope holds.
type Usage struct {
	Bytes int64
	Keys  int64
}

func (t *Tx) scope(scope string) (*bolt.Bucket, error) {
	b := t.tx.Bucket(bucketScopes).Bucket([]byte(scope))
	if b == nil {
		return nil, fmt.Errorf("index: no bucket for scope %q", scope)
	}
	return b, nil
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
	v := b.Get([]byte(key))
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
	if err := b.Put([]byte(e.Key), e.Encode()); err != nil {
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
		if err := t.tx.Bucket(bucketExpiry).Put(expiryKey(e.ExpiresAt, e.Scope, e.Key), nil); err != nil {
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
	if err := b.Put([]byte(e.Key), e.Encode()); err != nil {
		return err
	}
	if !old.ExpiresAt.Equal(e.ExpiresAt) {
		ex := t.tx.Bucket(bucketExpiry)
		if !old.ExpiresAt.IsZero() {
			if err := ex.Delete(expiryKey(old.ExpiresAt, old.Scope, old.Key)); err != nil {
				return err
			}
		}
		if !e.ExpiresAt.IsZero() {
			if err := ex.Put(expiryKey(e.ExpiresAt, e.Scope, e.Key), nil); err != nil {
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
	if err := b.Delete([]byte(key)); err != nil {
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
		if err := t.tx.Bucket(bucketExpiry).Delete(expiryKey(old.ExpiresAt, old.Scope, old.Key)); err != nil {
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
	c := b.Cursor()
	var e Entry
	n := 0
	for k, v := c.First(); k != nil; k, v = c.Next() {
		if n++; n%releaseEvery == 0 {
			t.ReleasePages()
		}
		e = Entry{Scope: scope, Key: string(k)}
		if err := e.Decode(v); err != nil {
			return fmt.Errorf("%s/%s: %w", scope, k, err)
		}
		if err := fn(&e); err != nil {
			return err
		}
	}
	return nil
}

// ForEachRaw calls fn with every record of scope, undecoded: fsck uses it
// to find records that do not decode.
func (t *Tx) ForEachRaw(scope string, fn func(key string, record []byte) error) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
}

// DeleteRaw removes a record without touching derived state (for records
// that cannot be decoded; fsck recomputes the derived state afterwards).
func (t *Tx) DeleteRaw(scope, key string) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	return b.Delete([]byte(key))
}

// Usage returns the usage counters of scope.
func (t *Tx) Usage(scope string) Usage {
	v := t.tx.Bucket(bucketUsage).Get([]byte(scope))
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
	return t.tx.Bucket(bucketUsage).Put([]byte(scope), v[:])
}

// Refs returns how many entries use the blob fp.
func (t *Tx) Refs(fp Fingerprint) uint64 {
	v := t.tx.Bucket(bucketRefs).Get(fp[:])
	n, _ := binary.Uvarint(v)
	return n
}

// ForEachRef calls fn for every fingerprint with a reference count.
func (t *Tx) ForEachRef(fn func(fp Fingerprint, n uint64) error) error {
	return t.tx.Bucket(bucketRefs).ForEach(func(k, v []byte) error {
		var fp Fingerprint
		copy(fp[:], k)
		n, _ := binary.Uvarint(v)
		return fn(fp, n)
	})
}

// SetRefs overwrites the reference count of fp (0 removes it).
func (t *Tx) SetRefs(fp Fingerprint, n uint64) error {
	b := t.tx.Bucket(bucketRefs)
	if n == 0 {
		return b.Delete(fp[:])
	}
	return b.Put(fp[:], binary.AppendUvarint(nil, n))
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
	c := t.tx.Bucket(bucketExpiry).Cursor()
	for k, _ := c.First(); k != nil && bytes.Compare(k[:8], limit) <= 0; k, _ = c.Next() {
		scope, key, ok := splitExpiryKey(k)
		if ok {
			todo = append(todo, [2]string{scope, key})
		}
	}
	for _, sk := range todo {
		if err := fn(sk[0], sk[1]); err != nil {
			return err
		}
	}
	return nil
}

// ClearExpiry empties the expiry index (fsck rebuilds it from the entries).
func (t *Tx) ClearExpiry() error {
	if err := t.tx.DeleteBucket(bucketExpiry); err != nil {
		return err
	}
	_, err := t.tx.CreateBucket(bucketExpiry)
	return err
}

// ClearRefs empties the reference counts (fsck rebuilds them).
func (t *Tx) ClearRefs() error {
	if err := t.tx.DeleteBucket(bucketRefs); err != nil {
		return err
	}
	_, err := t.tx.CreateBucket(bucketRefs)
	return err
}

// IndexExpiry adds e to the expiry index (fsck's rebuild).
func (t *Tx) IndexExpiry(e *Entry) error {
	if e.ExpiresAt.IsZero() {
		return nil
	}
	return t.tx.Bucket(bucketExpiry).Put(expiryKey(e.ExpiresAt, e.Scope, e.Key), nil)
}

// ExpiryIndexSize is the number of entries in the expiry index.
func (t *Tx) ExpiryIndexSize() int {
	return t.tx.Bucket(bucketExpiry).Stats().KeyN
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
