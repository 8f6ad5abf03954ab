package store

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"maps"
	"mime"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
)

// PutOptions describe the entry a write publishes. Zero fields take the
// defaults: the scope's TTL, a content type guessed from the key's
// extension or the first bytes, mode 0644, no metadata.
type PutOptions struct {
	TTL         time.Duration
	ContentType string
	Meta        map[string]string
	Mode        uint32
	UID, GID    uint32
	// ModTime is the mtime to publish (zero: the commit's time); a time set
	// on a file while it was being written (cp -p, touch) comes here.
	ModTime time.Time
	// Inherit keeps the replaced entry's content type, metadata, mode,
	// owner and per-key TTL where the options leave them zero: a file
	// rewritten through the mount keeps its attributes.
	Inherit bool
	// Base starts the new value as a copy of the current one (a file opened
	// for writing without O_TRUNC).
	Base bool
}

const defaultMode = 0o644

// Writer stages a new value for scope/key in a temporary file. Nothing is
// visible until Commit, which publishes the value atomically and durably;
// Abort (or a crash) leaves the old value untouched.
type Writer struct {
	s     *Store
	scope quota.Scope
	key   string
	opts  PutOptions

	// A value is staged in mem while it is small enough to ride in the
	// index journal (memStageMax): no temporary file to create, rename or
	// remove; it moves to the temporary file f when it grows past that.
	mem     []byte
	inFile  bool
	f       *os.File
	tmpName string
	size    int64

	// hash covers bytes [0, hashed) while writes arrive in order; a write
	// elsewhere drops it and Commit hashes the file instead.
	hash   hash.Hash
	hashed int64

	// room is how large the value may grow without exceeding the scope's
	// quota, as last computed; a write past it recomputes before refusing.
	room int64
	done bool
	// failed is an I/O error that left the staged file unlike what the
	// writer believes it holds; Commit refuses to publish after one.
	failed error
	// renamed is set once the staged file became a blob.
	renamed bool
}

// NewWriter starts a write of scope/key.
func (s *Store) NewWriter(scope, key string, opts PutOptions) (*Writer, error) {
	sc, err := s.checkAddress(scope, key)
	if err == nil {
		err = validatePutOptions(&opts)
	}
	if err != nil {
		return nil, opErr("put", scope, key, err)
	}
	w := &Writer{s: s, scope: sc, key: key, opts: opts, hash: sha256.New()}
	if err := w.refreshRoom(); err != nil {
		return nil, opErr("put", scope, key, err)
	}
	// A value staged in memory touches the disk only at commit: a store
	// that cannot be written (a read-only mount under it) is refused
	// here, at the first write, as the temporary file's creation did,
	// rather than at a close that callers like a shell never check.
	if err := unix.Access(filepath.Join(s.dir, blobsDir), unix.W_OK); err != nil {
		return nil, opErr("put", scope, key, &os.PathError{Op: "access", Path: filepath.Join(s.dir, blobsDir), Err: err})
	}
	if opts.Base {
		if err := w.copyBase(); err != nil {
			w.Abort()
			return nil, opErr("put", scope, key, err)
		}
	}
	return w, nil
}

// Put writes the whole of r as the value of scope/key and returns the
// published entry. r is streamed: a value never has to fit in memory.
func (s *Store) Put(scope, key string, r io.Reader, opts PutOptions) (index.Entry, error) {
	w, err := s.NewWriter(scope, key, opts)
	if err != nil {
		return index.Entry{}, err
	}
	if _, err := io.Copy(w, r); err != nil {
		w.Abort()
		return index.Entry{}, err
	}
	return w.Commit()
}

func validatePutOptions(o *PutOptions) error {
	if err := validateTTL(o.TTL); err != nil {
		return err
	}
	if err := validateContentType(o.ContentType); err != nil {
		return err
	}
	if err := validateMeta(o.Meta); err != nil {
		return err
	}
	if o.Mode&^0o7777 != 0 {
		return fmt.Errorf("%w: mode %o", ErrBadArgument, o.Mode)
	}
	return nil
}

func (w *Writer) createTmp() error {
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	name := hex.EncodeToString(rnd[:]) + tmpSuffix
	w.s.tmpMu.Lock()
	w.s.liveTmp[name] = struct{}{}
	w.s.tmpMu.Unlock()
	f, err := os.OpenFile(filepath.Join(w.s.dir, tmpDir, name), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		w.forgetTmp(name)
		return err
	}
	w.f, w.tmpName = f, name
	return nil
}

// memStageMax is the largest value staged in memory: what the journal
// takes in a record.
const memStageMax = index.JournalMaxAttach

// toFile moves the staged value from memory to a temporary file.
func (w *Writer) toFile() error {
	if w.inFile {
		return nil
	}
	if err := w.createTmp(); err != nil {
		return err
	}
	w.inFile = true
	if _, err := w.f.WriteAt(w.mem, 0); err != nil {
		w.failed = err
		return err
	}
	w.mem = nil
	return nil
}

func (w *Writer) forgetTmp(name string) {
	w.s.tmpMu.Lock()
	delete(w.s.liveTmp, name)
	w.s.tmpMu.Unlock()
}

func (w *Writer) copyBase() error {
	v, err := w.s.openLive(w.scope.Name, w.key)
	if errors.Is(err, ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	defer v.Close()
	_, err = io.Copy(w, v.Reader())
	return err
}

// refreshRoom recomputes how large the value may grow.
func (w *Writer) refreshRoom() error {
	return w.s.db.View(func(tx *index.Tx) error {
		old, found, err := tx.Get(w.scope.Name, w.key)
		if err != nil {
			return err
		}
		var oldSize int64
		if found {
			oldSize = old.Size
		}
		u := tx.Usage(w.scope.Name)
		w.room = w.scope.Room(quota.Usage{Bytes: u.Bytes, Keys: u.Keys}, oldSize)
		return nil
	})
}

// admit checks, before any byte lands, that the value may grow to size.
// Expired entries of the scope still count until reclaimed, so a write that
// would not fit first reclaims them.
func (w *Writer) admit(size int64) error {
	if size <= w.room {
		return nil
	}
	if size > w.scope.Quota {
		w.s.counters.QuotaRejects.Add(1)
		return fmt.Errorf("%w: %d bytes, quota of %s is %d bytes", ErrTooLarge, size, w.scope.Name, w.scope.Quota)
	}
	if err := w.refreshRoom(); err != nil {
		return err
	}
	if size <= w.room {
		return nil
	}
	if n, _ := w.s.reclaimExpired(w.scope.Name); n > 0 {
		if err := w.refreshRoom(); err != nil {
			return err
		}
		if size <= w.room {
			return nil
		}
	}
	w.s.counters.QuotaRejects.Add(1)
	return fmt.Errorf("%w: %s has room for %d more bytes of this value, it would have %d", ErrOverQuota, w.scope.Name, w.room, size)
}

func (w *Writer) usable() error {
	if w.done {
		return errors.New("writer already committed or aborted")
	}
	return nil
}

// Write appends p.
func (w *Writer) Write(p []byte) (int, error) {
	return w.WriteAt(p, w.size)
}

// WriteAt writes p at off. A write that would take the value past its
// scope's quota writes nothing and fails with ErrOverQuota or ErrTooLarge.
func (w *Writer) WriteAt(p []byte, off int64) (int, error) {
	if err := w.usable(); err != nil {
		return 0, err
	}
	if off < 0 {
		return 0, fmt.Errorf("%w: negative offset", ErrBadArgument)
	}
	if len(p) == 0 {
		return 0, nil // like pwrite of 0 bytes: the size does not change
	}
	end := off + int64(len(p))
	if end > w.size {
		if err := w.admit(end); err != nil {
			return 0, opErr("write", w.scope.Name, w.key, err)
		}
	}
	var n int
	var err error
	if !w.inFile && end > memStageMax {
		if err := w.toFile(); err != nil {
			return 0, opErr("write", w.scope.Name, w.key, err)
		}
	}
	if w.inFile {
		n, err = w.f.WriteAt(p, off)
	} else {
		if end > int64(len(w.mem)) {
			w.mem = append(w.mem, make([]byte, end-int64(len(w.mem)))...)
		}
		n = copy(w.mem[off:], p)
	}
	if w.hash != nil {
		if off == w.size { // an append to the hashed prefix (hashed == size while hash is set)
			w.hash.Write(p[:n])
			w.hashed += int64(n)
		} else {
			w.hash = nil
		}
	}
	if e := off + int64(n); e > w.size {
		w.size = e
	}
	if err != nil {
		// The staged file may now hold part of p beyond what Size says:
		// this value can never be published.
		w.failed = err
		return n, opErr("write", w.scope.Name, w.key, err)
	}
	return n, nil
}

// ReadAt reads back the staged bytes (a reader of the file being written).
func (w *Writer) ReadAt(p []byte, off int64) (int, error) {
	if err := w.usable(); err != nil {
		return 0, err
	}
	if off >= w.size {
		return 0, io.EOF
	}
	if !w.inFile {
		n := copy(p, w.mem[off:w.size])
		if n < len(p) {
			return n, io.EOF
		}
		return n, nil
	}
	if max := w.size - off; int64(len(p)) > max {
		p = p[:max]
		n, err := w.f.ReadAt(p, off)
		if err == nil {
			err = io.EOF
		}
		return n, err
	}
	return w.f.ReadAt(p, off)
}

// Truncate sets the staged value's size.
func (w *Writer) Truncate(size int64) error {
	if err := w.usable(); err != nil {
		return err
	}
	if size < 0 {
		return fmt.Errorf("%w: negative size", ErrBadArgument)
	}
	if size > w.size {
		if err := w.admit(size); err != nil {
			return opErr("truncate", w.scope.Name, w.key, err)
		}
	}
	if !w.inFile && size > memStageMax {
		if err := w.toFile(); err != nil {
			return opErr("truncate", w.scope.Name, w.key, err)
		}
	}
	if !w.inFile {
		if size > int64(len(w.mem)) {
			w.mem = append(w.mem, make([]byte, size-int64(len(w.mem)))...)
		}
		w.mem = w.mem[:size]
	} else if err := w.f.Truncate(size); err != nil {
		w.failed = err
		return opErr("truncate", w.scope.Name, w.key, err)
	}
	if size != w.hashed {
		w.hash = nil
	}
	w.size = size
	return nil
}

// Update changes the options the value will be published with (metadata
// set on a file while it is being written).
func (w *Writer) Update(fn func(o *PutOptions)) error {
	if err := w.usable(); err != nil {
		return err
	}
	o := w.opts
	o.Meta = maps.Clone(o.Meta)
	fn(&o)
	if err := validatePutOptions(&o); err != nil {
		return opErr("put", w.scope.Name, w.key, err)
	}
	w.opts = o
	return nil
}

// Size is the staged value's size.
func (w *Writer) Size() int64 { return w.size }

// Abort discards the staged value.
func (w *Writer) Abort() {
	if w.done {
		return
	}
	w.done = true
	w.mem = nil
	if w.f == nil {
		return
	}
	w.f.Close()
	if !w.renamed {
		os.Remove(filepath.Join(w.s.dir, tmpDir, w.tmpName))
	}
	w.forgetTmp(w.tmpName)
}

// Commit publishes the staged value. When it returns nil the value is
// durable: its blob is synced and named, and the index commit that points
// the key at it is synced. On any error the key keeps its previous value.
func (w *Writer) Commit() (index.Entry, error) {
	if err := w.usable(); err != nil {
		return index.Entry{}, err
	}
	if w.failed != nil {
		w.Abort()
		return index.Entry{}, opErr("put", w.scope.Name, w.key, fmt.Errorf("an earlier write failed: %w", w.failed))
	}
	e, err := w.commit()
	w.Abort() // releases the temporary file in every case
	return e, opErr("put", w.scope.Name, w.key, err)
}

func (w *Writer) commit() (index.Entry, error) {
	s := w.s
	s.exclusive.RLock()
	defer s.exclusive.RUnlock()
	if s.closed.Load() {
		return index.Entry{}, ErrClosed
	}
	var fp index.Fingerprint
	switch {
	case w.hash != nil && w.hashed == w.size:
		copy(fp[:], w.hash.Sum(nil))
	case !w.inFile:
		fp = sha256.Sum256(w.mem)
	default:
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(w.f, 0, w.size)); err != nil {
			return index.Entry{}, err
		}
		copy(fp[:], h.Sum(nil))
	}
	sniff := make([]byte, min(w.size, 512))
	if _, err := w.ReadAt(sniff, 0); err != nil && !errors.Is(err, io.EOF) {
		return index.Entry{}, err
	}
	origin := w.origin(sniff)

	s.blobMu.Lock()
	concurrent := s.inflight[fp] > 0
	s.inflight[fp]++
	s.blobMu.Unlock()
	var dropped []index.Fingerprint
	defer func() {
		s.blobMu.Lock()
		if s.inflight[fp]--; s.inflight[fp] == 0 {
			delete(s.inflight, fp)
		}
		s.blobMu.Unlock()
		s.removeBlobs(dropped)
	}()

	// A small value whose file takes a new name rides in the index
	// journal's record (journaled.go): one fdatasync for value and entry.
	var attach []byte
	if !w.inFile {
		var err error
		if attach, err = w.writeBlobJournaled(fp, origin); err != nil {
			return index.Entry{}, err
		}
		if attach == nil {
			// The name is taken: the file route, which may replace it.
			if err := w.toFile(); err != nil {
				return index.Entry{}, err
			}
		}
	}
	if attach == nil {
		if err := w.f.Chmod(0o444); err != nil {
			return index.Entry{}, err
		}
		setOriginXattr(w.f, origin)
		if err := w.nameBlob(fp, concurrent); err != nil {
			return index.Entry{}, err
		}
	}

	now := s.now().UTC()
	var published index.Entry
	var reclaimedKeys []string
	err := s.db.Batch(func(tx *index.Tx) error {
		dropped, reclaimedKeys = dropped[:0], nil
		if attach != nil {
			tx.Attach(attach)
		}
		old, found, err := tx.Get(w.scope.Name, w.key)
		if err != nil {
			return err
		}
		e := w.newEntry(now, fp, sniff, old, found)
		var oldSize int64
		if found {
			oldSize = old.Size
		}
		u := tx.Usage(w.scope.Name)
		if err := w.scope.Admit(quota.Usage{Bytes: u.Bytes, Keys: u.Keys}, oldSize, e.Size); err != nil {
			freed, reclaimed, rerr := reclaimExpiredTx(tx, w.scope.Name, now)
			if rerr != nil {
				return rerr
			}
			dropped = append(dropped, freed...)
			reclaimedKeys = reclaimed
			if found && old.ExpiredAt(now) {
				oldSize = 0
			}
			u = tx.Usage(w.scope.Name)
			if err := w.scope.Admit(quota.Usage{Bytes: u.Bytes, Keys: u.Keys}, oldSize, e.Size); err != nil {
				return err
			}
		}
		prev, replaced, err := tx.Put(e)
		if err != nil {
			return err
		}
		if replaced && prev.Fingerprint != fp && tx.Refs(prev.Fingerprint) == 0 {
			dropped = append(dropped, prev.Fingerprint)
		}
		published = e
		return nil
	})
	if err != nil {
		if errors.Is(err, ErrOverQuota) || errors.Is(err, ErrTooLarge) {
			s.counters.QuotaRejects.Add(1)
		}
		dropped = append(dropped[:0], fp) // the blob we named, if nothing else uses it
	} else {
		// A delete or overwrite that dropped fp's last reference while we
		// had it in flight left the blob alone; removing it is now ours to
		// do (removeBlobs keeps it while anything references it).
		dropped = append(dropped, fp)
		for _, k := range reclaimedKeys {
			s.changed(w.scope.Name, k)
		}
		s.changed(w.scope.Name, w.key)
	}
	return published, err
}

// nameBlob makes the staged file the blob of fp, durably: when it returns
// nil, blobs/xx/<fp> holds exactly the value and survives a crash, so an
// index commit may point at it. concurrent says another writer of the same
// value was in flight when this one started naming it.
func (w *Writer) nameBlob(fp index.Fingerprint, concurrent bool) error {
	s := w.s
	tmp := filepath.Join(s.dir, tmpDir, w.tmpName)
	blob := s.BlobPath(fp)
	if s.durability == fileSyncAfterRename {
		// Rename first, then one fsync of the file makes its data, inode
		// and new name durable together (durable.go says on which
		// filesystems, and why). RENAME_NOREPLACE: this file, not synced
		// yet, may only take a name nobody has; it never replaces a blob
		// that a committed entry, or a writer that synced it, relies on.
		err := unix.Renameat2(unix.AT_FDCWD, tmp, unix.AT_FDCWD, blob, unix.RENAME_NOREPLACE)
		if err == nil {
			w.renamed = true
			return w.f.Sync()
		}
		if !errors.Is(err, unix.EEXIST) && !errors.Is(err, unix.EINVAL) {
			return &os.LinkError{Op: "rename", Old: tmp, New: blob, Err: err}
		}
		// The name exists (EEXIST), or the filesystem does not know the
		// flag (EINVAL): the portable order.
	}
	if err := w.f.Sync(); err != nil {
		return err
	}
	_, statErr := os.Lstat(blob)
	existed := statErr == nil
	if err := os.Rename(tmp, blob); err != nil {
		return err
	}
	w.renamed = true // Abort has no temporary file to remove
	// The directory needs no sync only when the name we replaced was a
	// blob that a committed entry references and no other writer of this
	// value is in flight: that blob was whole and durable, and whichever
	// of the two files a crash leaves under the name holds the value. Any
	// other existing name may be a file renamed into place before its data
	// was synced and cut short by a power cut (durable.go): never trusted.
	if existed && !concurrent && s.referenced(fp) {
		return nil
	}
	return syncDir(s.blobDir(fp))
}

// referenced reports whether a committed entry uses the blob fp.
func (s *Store) referenced(fp index.Fingerprint) bool {
	var n uint64
	_ = s.db.View(func(tx *index.Tx) error {
		n = tx.Refs(fp)
		return nil
	})
	return n > 0
}

// origin is what the blob records of the scope, key and content type it
// is written under (originXattr), set before the sync that makes the blob
// durable carries it along. Best effort: a filesystem without user xattrs
// just has no names to offer a rebuild of the index.
func (w *Writer) origin(sniff []byte) []byte {
	o := blobOrigin{Scope: w.scope.Name, Key: w.key, ContentType: w.opts.ContentType}
	if o.ContentType == "" {
		o.ContentType = guessContentType(w.key, sniff)
	}
	b, err := json.Marshal(o)
	if err != nil {
		return nil
	}
	return b
}

// setOriginXattr sets originXattr on f, best effort.
func setOriginXattr(f *os.File, origin []byte) {
	if len(origin) == 0 {
		return
	}
	rc, err := f.SyscallConn()
	if err != nil {
		return
	}
	_ = rc.Control(func(fd uintptr) { _ = unix.Fsetxattr(int(fd), originXattr, origin, 0) })
}

func (w *Writer) newEntry(now time.Time, fp index.Fingerprint, sniff []byte, old index.Entry, found bool) index.Entry {
	o := w.opts
	e := index.Entry{
		Scope: w.scope.Name, Key: w.key, Size: w.size, Fingerprint: fp,
		CreatedAt: now, ModTime: now,
		ContentType: o.ContentType, Meta: maps.Clone(o.Meta), Mode: o.Mode, UID: o.UID, GID: o.GID,
		TTL: o.TTL,
	}
	if !o.ModTime.IsZero() {
		e.ModTime = index.ClampTime(o.ModTime.UTC())
	}
	if o.ContentType != "" {
		e.Flags |= index.FlagContentTypeSet
	}
	ttlChosen := o.TTL != 0
	if ttlChosen {
		e.Flags |= index.FlagTTLSet
	}
	// An expired entry is gone to its users: a key written again after it
	// expired starts afresh, without the dead entry's attributes.
	if o.Inherit && found && !old.ExpiredAt(now) {
		// Only what someone chose is inherited; a guessed content type or
		// the scope's TTL is worked out afresh for the new value.
		if e.ContentType == "" && old.Flags&index.FlagContentTypeSet != 0 {
			e.ContentType = old.ContentType
			e.Flags |= index.FlagContentTypeSet
		}
		if e.Meta == nil {
			e.Meta = maps.Clone(old.Meta)
		}
		if e.Mode == 0 {
			e.Mode = old.Mode
		}
		if e.UID == 0 && e.GID == 0 {
			e.UID, e.GID = old.UID, old.GID
		}
		if !ttlChosen && old.Flags&index.FlagTTLSet != 0 {
			// A chosen TTL of 0 (never expires) is kept too.
			e.TTL, ttlChosen = old.TTL, true
			e.Flags |= index.FlagTTLSet
		}
	}
	if !ttlChosen {
		e.TTL = w.scope.TTL
	}
	if e.TTL > 0 {
		e.ExpiresAt = now.Add(e.TTL)
	}
	if e.Mode == 0 {
		e.Mode = defaultMode
	}
	if e.ContentType == "" {
		e.ContentType = guessContentType(w.key, sniff)
	}
	return e
}

// guessContentType names a value's type from its key's extension, or else
// from its first bytes.
func guessContentType(key string, head []byte) string {
	switch ext := path.Ext(key); ext {
	case ".md", ".markdown":
		return "text/markdown; charset=utf-8"
	case "":
	default:
		if t := mime.TypeByExtension(ext); t != "" {
			return t
		}
	}
	if len(head) == 0 {
		return "application/octet-stream"
	}
	return http.DetectContentType(head)
}
