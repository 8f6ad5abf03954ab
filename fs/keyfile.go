package fs

import (
	"context"
	"encoding/hex"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// keyFile is one version of one key: the inode shows exactly one value
// (fingerprint). A new value of the key gets a new inode (see
// scopeDir.versionInode); this one lives on for whoever still has it open.
//
// The kernel may know a key file for every key of a scope (a listing of
// 100,000 keys makes 100,000), so it holds only what every file needs: 256
// bytes with go-fuse's Inode (TestKeyFileSize). What only files that are
// written, opened or given times need lives in x, made on first need.
type keyFile struct {
	gofs.Inode
	dir *scopeDir

	mu    sync.Mutex
	key   string
	shown index.Attrs // the attributes of the value shown; zero while pending
	// readers counts open read handles. Readers and a writer never share
	// an inode: the kernel keeps one size and one page cache per inode,
	// and a writer's size changes would cut readers' reads short or pad
	// them with zeros. An open that would mix them fails with ESTALE and
	// leaves a retry note (scopeDir.retries); the kernel's retry looks the
	// name up again, and the lookup gives that caller an inode of the kind
	// it needs.
	readers  int32
	pending  bool // created through the mount, not yet published
	unlinked bool // removed while open: never publish it
	// superseded is set once the key has a newer value than this inode's.
	superseded bool
	x          *keyExtra // nil until needed; never reset
}

// keyExtra is the state of a key file that few files need.
type keyExtra struct {
	// meta is the content type, TTL, flags and free metadata of the value
	// shown, as last read (hasMeta): what the extended attributes of an
	// open file show once its key has moved on (fgetxattr of a replaced
	// or unlinked file). A current file's attributes are read afresh.
	meta    shownMeta
	hasMeta bool

	writers int // open write handles, until their first close
	// writeHandles counts write handles from open to RELEASE.
	writeHandles int
	// reservedFor is the caller (thread id) a writer's inode was made for
	// by a lookup after an ESTALE (see keyFile.readers); readers keep off it.
	reservedFor uint32
	pendingAttr struct{ Mode, UID, GID uint32 }
	// mtime is the last time set with utimensat, mtimeSeq counts them:
	// a write handle open before it applies it to what it publishes.
	mtime    time.Time
	mtimeSeq uint64

	// val is the verified value no-open reads are served from (read-only
	// mounts, see noopen.go), from the first read until the kernel forgets
	// the inode.
	valMu sync.Mutex
	val   *store.Value
}

var (
	_ gofs.NodeGetattrer     = (*keyFile)(nil)
	_ gofs.NodeSetattrer     = (*keyFile)(nil)
	_ gofs.NodeOpener        = (*keyFile)(nil)
	_ gofs.NodeGetxattrer    = (*keyFile)(nil)
	_ gofs.NodeSetxattrer    = (*keyFile)(nil)
	_ gofs.NodeListxattrer   = (*keyFile)(nil)
	_ gofs.NodeRemovexattrer = (*keyFile)(nil)
)

// extra returns k.x, making it. Callers hold mu.
func (k *keyFile) extra() *keyExtra {
	if k.x == nil {
		k.x = &keyExtra{}
	}
	return k.x
}

// extraNow is extra for callers that do not hold mu.
func (k *keyFile) extraNow() *keyExtra {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.extra()
}

// current reports whether this inode may show the key's current value.
// Callers hold mu.
func (k *keyFile) current() bool { return !k.pending && !k.unlinked && !k.superseded }

// showLocked makes the inode show e's attributes (and metadata, where it
// keeps them). Callers hold mu.
func (k *keyFile) showLocked(e *index.Entry) {
	k.shown = e.Attrs()
	if k.x != nil {
		k.x.meta, k.x.hasMeta = metaOf(e), true
	}
}

// shows reports whether this inode shows value e, refreshing its metadata
// (mode, times, TTL change) if so.
func (k *keyFile) shows(e *index.Entry) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.current() || k.shown.Fingerprint != e.Fingerprint {
		return false
	}
	k.showLocked(e)
	return true
}

// showsAttrs is shows for a listing, which has only the attributes: the
// metadata kept, if any, stays.
func (k *keyFile) showsAttrs(a *index.Attrs) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	if !k.current() || k.shown.Fingerprint != a.Fingerprint {
		return false
	}
	k.shown = *a
	return true
}

// keepMeta makes the inode keep e's metadata from now on, if it shows e:
// an open file's extended attributes must outlive its key's value.
func (k *keyFile) keepMeta(e *index.Entry) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.current() && k.shown.Fingerprint == e.Fingerprint {
		k.extra()
		k.showLocked(e)
	}
}

// reusable reports whether a lookup by caller pid may answer with this
// inode for the value of attributes a (full: its entry, if known): it shows
// that value, and it is a reader's inode (no writer, not reserved for one),
// or, for a writer retrying its open, the one reserved for it.
func (k *keyFile) reusable(a *index.Attrs, full *index.Entry, pid uint32, forWrite bool) bool {
	k.mu.Lock()
	var writers int
	var reserved uint32
	if k.x != nil {
		writers, reserved = k.x.writers, k.x.reservedFor
	}
	k.mu.Unlock()
	ok := forWrite && reserved == pid || !forWrite && writers == 0 && reserved == 0
	if !ok {
		return false
	}
	if full != nil {
		return k.shows(full)
	}
	return k.showsAttrs(a)
}

// writing reports whether a writer has, or is about to get, this inode.
func (k *keyFile) writing() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.x != nil && (k.x.writers > 0 || k.x.reservedFor != 0)
}

// soleHandle reports whether the only handle open on this inode is one
// write handle: then every descriptor on the inode is a copy of that
// handle's (dup, fork), as each open makes a handle.
func (k *keyFile) soleHandle() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.readers == 0 && k.x != nil && k.x.writeHandles == 1
}

// release forgets one open handle.
func (k *keyFile) release(writer bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if writer {
		k.extra().writers--
	} else {
		k.readers--
	}
}

// showsExactly reports whether this inode shows e with the attributes the
// kernel may have cached for it.
func (k *keyFile) showsExactly(e *index.Entry) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.current() && k.shown == e.Attrs()
}

func (k *keyFile) scope() string { return k.dir.scope }

func (k *keyFile) name() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.key
}

func (k *keyFile) markUnlinked() (pending bool) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.unlinked = true
	return k.pending
}

func (k *keyFile) renamed(to string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.key = to
}

// published records that a write through this inode published e. From a
// close (atClose) the kernel's name is invalidated before close returns, so
// the writer's next open or stat sees the new value; elsewhere (fsync,
// truncate) the kernel holds the file's lock, and invalidating the name,
// which takes the directory's, could deadlock against a rename: it is done
// in the background, and opens of the old inode still serve a consistent
// value meanwhile. It reports whether it left the invalidation to the
// background.
func (k *keyFile) published(e index.Entry, atClose bool) (deferred bool) {
	k.mu.Lock()
	wasPending := k.pending
	if wasPending {
		// A fresh inode nobody else read: it can show the new value.
		k.pending = false
		k.extra()
		k.showLocked(&e)
	} else {
		k.superseded = true
	}
	k.mu.Unlock()
	if wasPending {
		return false
	}
	if atClose {
		_ = k.dir.NotifyEntry(e.Key)
		return false
	}
	k.dir.fs.invalidateName(k.dir.EmbeddedInode(), e.Key)
	return true
}

// abandoned records that a pending file will never be published. From a
// close, as in published, the kernel forgets the name before close returns:
// a stat right after the failed close must not find a file the store does
// not have.
func (k *keyFile) abandoned(atClose bool) {
	k.mu.Lock()
	pending, key := k.pending, k.key
	k.mu.Unlock()
	if !pending {
		return
	}
	if atClose {
		_ = k.dir.NotifyEntry(key)
	} else {
		k.dir.fs.invalidateName(k.dir.EmbeddedInode(), key)
	}
}

// refresh re-reads the entry if the key still has this inode's value and
// reports whether it does, with the entry.
func (k *keyFile) refresh() (index.Entry, bool) {
	k.mu.Lock()
	if !k.current() {
		k.mu.Unlock()
		return index.Entry{}, false
	}
	key, fp := k.key, k.shown.Fingerprint
	k.mu.Unlock()
	e, err := k.dir.fs.store.Lookup(k.scope(), key)
	if err != nil || e.Fingerprint != fp {
		return index.Entry{}, false
	}
	return e, k.shows(&e)
}

func (k *keyFile) fillEntry(out *fuse.EntryOut, a *index.Attrs) {
	k.attrOf(a, 0, false, &out.Attr)
	t := k.dir.fs.timeoutUntil(a.ExpiresAt())
	out.SetEntryTimeout(t)
	out.SetAttrTimeout(t)
}

// attrOf fills attributes from a; with sized, size overrides a's.
func (k *keyFile) attrOf(a *index.Attrs, size int64, sized bool, out *fuse.Attr) {
	if !sized {
		size = a.Size
	}
	out.Mode = syscall.S_IFREG | (a.Mode & 0o7777)
	if a.Mode == 0 {
		out.Mode = syscall.S_IFREG | 0o644
	}
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = (out.Size + 511) / 512
	out.Blksize = 4096
	out.Uid, out.Gid = k.dir.fs.opts.UID, k.dir.fs.opts.GID
	if a.UID != 0 || a.GID != 0 {
		out.Uid, out.Gid = a.UID, a.GID
	}
	mtime, ctime := a.ModTime(), a.CreatedAt()
	out.SetTimes(&mtime, &mtime, &ctime)
}

// fillAttr fills attributes for this inode as seen through handle h (nil
// for a path operation).
func (k *keyFile) fillAttr(out *fuse.Attr, h *writeHandle) {
	k.mu.Lock()
	a := k.shown
	pending, unlinked := k.pending, k.unlinked
	var pa struct{ Mode, UID, GID uint32 }
	if k.x != nil {
		pa = k.x.pendingAttr
	}
	k.mu.Unlock()
	if pending {
		now := time.Now().UnixNano()
		a = index.Attrs{Mode: pa.Mode, UID: pa.UID, GID: pa.GID, Modified: now, Created: now, Expires: index.NoTime}
	}
	size, sized := int64(0), pending
	// Only a file nobody has seen a value of shows its staged size. A
	// published key keeps its value's attributes until the writer's close:
	// the kernel keeps one size per inode, readers and writer share the
	// inode, and a GETATTR without a file handle (stat, fstat) comes here
	// with whichever handle go-fuse finds open first, so a staged size
	// would cut readers' page-cache reads short (a torn value).
	if h != nil && pending {
		if s, ok := h.size(); ok {
			size, sized = s, true
		}
	}
	k.attrOf(&a, size, sized, out)
	if unlinked {
		out.Nlink = 0
	}
}

func (k *keyFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	h, _ := f.(*writeHandle)
	_, current := k.refresh()
	k.fillAttr(&out.Attr, h)
	if current && !k.writing() && (h == nil || !h.dirty()) {
		k.mu.Lock()
		out.SetTimeout(k.dir.fs.timeoutUntil(k.shown.ExpiresAt()))
		k.mu.Unlock()
	} else {
		out.SetTimeout(noCache)
	}
	return 0
}

// checkWritable fails with ESTALE when a write open must not use this
// inode: its key is gone from the store; the kernel then looks the name up
// again and retries the open on the right inode. An inode that merely shows
// an older value is fine (the writer starts from the key's current value,
// and its reads and writes bypass the inode's cache), and so is a file
// another writer is still creating (both stage their own value; the last to
// close wins, as with any two writers). An open that raced an unlink or a
// rename over the file gets the removed file, as POSIX has it: what is
// written to it is never published.
func (k *keyFile) checkWritable() syscall.Errno {
	k.mu.Lock()
	pending, unlinked := k.pending, k.unlinked
	key := k.key
	k.mu.Unlock()
	if pending || unlinked {
		return 0
	}
	_, err := k.dir.fs.store.Lookup(k.scope(), key)
	if errors.Is(err, store.ErrNotFound) {
		return syscall.ESTALE
	}
	return k.dir.fs.errno(err)
}

func (k *keyFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		if k.dir.fs.opts.ReadOnly {
			return nil, 0, syscall.EROFS
		}
		if errno := k.checkWritable(); errno != 0 {
			return nil, 0, errno
		}
		k.mu.Lock()
		if k.readers > 0 {
			k.mu.Unlock()
			k.dir.noteRetry(ctx, k.name(), true)
			return nil, 0, syscall.ESTALE
		}
		x := k.extra()
		x.writers++
		x.writeHandles++
		seq := x.mtimeSeq
		key := k.key
		k.mu.Unlock()
		k.dir.clearRetry(ctx, key)
		// Writes bypass the page cache: nothing staged is ever cached as
		// the key's value.
		return &writeHandle{node: k, truncated: flags&syscall.O_TRUNC != 0, appending: flags&syscall.O_APPEND != 0, mtimeSeq: seq}, fuse.FOPEN_DIRECT_IO, 0
	}
	if k.dir.fs.noOpen() {
		// Read-only mount: no OPEN, ever again (noopen.go); reads come to
		// k.Read and verify the value at the first one.
		return nil, 0, syscall.ENOSYS
	}
	// A reader. Where this inode cannot serve it (a writer has it, or its
	// value is gone), the open fails with ESTALE once, leaving a retry note:
	// the kernel then looks the name up again and opens an inode that shows
	// the key's current value. The retry itself never gets ESTALE.
	pid, retrying, asWriter := k.dir.retryKind(ctx, k.name())
	mayRetry := pid != 0 && !(retrying && !asWriter)
	k.mu.Lock()
	if k.pending || k.x != nil && (k.x.writers > 0 || k.x.reservedFor != 0) {
		pending, key := k.pending, k.key
		if pending || mayRetry {
			k.mu.Unlock()
			if !pending {
				k.dir.noteRetry(ctx, key, false)
			}
			return nil, 0, syscall.ESTALE
		}
		// The retry found a writer again (one opened the inode the retry
		// looked up): serve the key's current value, bypassing the inode's
		// size and pages.
		k.readers++
		k.mu.Unlock()
		k.dir.clearRetry(ctx, key)
		v, err := k.dir.fs.store.Open(k.scope(), key)
		if err != nil {
			k.release(false)
			return nil, 0, k.dir.fs.errno(err)
		}
		return &readHandle{v: v, node: k}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	shown, key := k.shown.Entry(k.dir.scope, k.key), k.key
	k.readers++ // held while opening, so no writer slips in
	k.mu.Unlock()
	v, errno := k.openValue(key, shown, mayRetry)
	if errno == syscall.ESTALE && mayRetry {
		k.dir.noteRetry(ctx, key, false)
	} else {
		k.dir.clearRetry(ctx, key)
	}
	if errno != 0 {
		k.release(false)
		return nil, 0, errno
	}
	if v.Entry.Fingerprint != shown.Fingerprint {
		// Another value than this inode shows (see openValue): bypass the
		// inode's size and pages.
		return &readHandle{v: v, node: k}, fuse.FOPEN_DIRECT_IO | fuse.FOPEN_NOFLUSH, 0
	}
	// The value is verified and this inode never shows another: the
	// kernel may keep its pages across opens. A reader has nothing to
	// publish, so its close needs no FLUSH round trip.
	return &readHandle{v: v, node: k}, fuse.FOPEN_KEEP_CACHE | fuse.FOPEN_NOFLUSH, 0
}

// openValue opens, verified, the value this inode shows. If the key has
// moved on to another value since, the reader still gets the one it looked
// up (as after a rename over a file it had resolved) as long as the store
// has it. If that value is gone, or the key is, the open fails with ESTALE
// when the caller may retry (mayRetry), and the kernel looks the name up
// again: the inode it then opens shows the current value, so that fstat,
// mmap and the reads of one descriptor agree. A retry that raced yet
// another replacement gets the key's current value on this inode (complete,
// but fstat shows this inode's size), and one that finds the key gone,
// ENOENT.
func (k *keyFile) openValue(key string, shown index.Entry, mayRetry bool) (*store.Value, syscall.Errno) {
	scope := k.scope()
	v, err := k.dir.fs.store.Open(scope, key)
	if err != nil && k.dir.fs.heal(scope, key, err) {
		return nil, syscall.ESTALE // restored: a new value, on a new inode
	}
	switch {
	case errors.Is(err, store.ErrNotFound) && mayRetry:
		return nil, syscall.ESTALE
	case err != nil:
		return nil, k.dir.fs.errno(err)
	case v.Entry.Fingerprint == shown.Fingerprint:
		// The current value: keep its metadata for fgetxattr, should the
		// key move on while the file is open.
		k.keepMeta(&v.Entry)
		return v, 0
	}
	shown.Key = key
	old, err := k.dir.fs.store.OpenVersion(shown)
	switch {
	case err == nil:
		v.Close()
		return old, 0
	case mayRetry: // the looked-up value is gone
		v.Close()
		return nil, syscall.ESTALE
	default: // a retry that raced again
		return v, 0
	}
}

func (k *keyFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if k.dir.fs.opts.ReadOnly {
		return syscall.EROFS
	}
	h, _ := f.(*writeHandle)
	if size, ok := in.GetSize(); ok {
		var errno syscall.Errno
		if h != nil {
			errno = h.truncate(int64(size))
		} else {
			errno = k.truncatePath(int64(size))
		}
		if errno != 0 {
			return errno
		}
	}
	mode, hasMode := in.GetMode()
	uid, hasUID := in.GetUID()
	gid, hasGID := in.GetGID()
	mtime, hasMtime := in.GetMTime()
	if hasMode || hasUID || hasGID || hasMtime {
		k.mu.Lock()
		pending := k.pending
		if hasMtime {
			x := k.extra()
			x.mtime, x.mtimeSeq = mtime.UTC(), x.mtimeSeq+1
		}
		if pending {
			x := k.extra()
			if hasMode {
				x.pendingAttr.Mode = mode & 0o7777
			}
			if hasUID {
				x.pendingAttr.UID = uid
			}
			if hasGID {
				x.pendingAttr.GID = gid
			}
		}
		key := k.key
		k.mu.Unlock()
		if !pending {
			e, err := k.dir.fs.store.UpdateMeta(k.scope(), key, func(e *index.Entry) error {
				if hasMode {
					e.Mode = mode & 0o7777
				}
				if hasUID {
					e.UID = uid
				}
				if hasGID {
					e.GID = gid
				}
				if hasMtime {
					e.ModTime = mtime.UTC()
				}
				return nil
			})
			if err != nil {
				return k.dir.fs.errno(err)
			}
			k.shows(&e)
		}
	}
	k.fillAttr(&out.Attr, h)
	out.SetTimeout(noCache)
	return 0
}

// truncatePath is truncate(2) on a path: a new value, published at once.
// The new value is the current one cut or zero-extended; when that current
// value is this inode's and nobody has it open for reading, the inode goes
// on showing the new one, as the kernel cuts or extends its size and cached
// pages to what Setattr answers (and so a stat right after the truncate
// sees the new size). With readers, the inode keeps the old value and size
// (cutting them would cut the readers' reads short: a torn value), and the
// name is invalidated in the background; until then a stat through it shows
// the old size.
func (k *keyFile) truncatePath(size int64) syscall.Errno {
	k.mu.Lock()
	pending, key := k.pending, k.key
	k.mu.Unlock()
	if pending {
		return syscall.EBUSY
	}
	from, err := k.dir.fs.store.Open(k.scope(), key)
	if err != nil {
		return k.dir.fs.errno(err)
	}
	defer from.Close()
	w, err := k.dir.fs.store.NewWriter(k.scope(), key, store.PutOptions{Inherit: true})
	if err != nil {
		return k.dir.fs.errno(err)
	}
	if _, err := io.Copy(w, io.LimitReader(from.Reader(), size)); err != nil {
		w.Abort()
		return k.dir.fs.errno(err)
	}
	if err := w.Truncate(size); err != nil {
		w.Abort()
		return k.dir.fs.errno(err)
	}
	e, err := w.Commit()
	if err != nil {
		return k.dir.fs.errno(err)
	}
	k.mu.Lock()
	same := !k.unlinked && !k.superseded && k.shown.Fingerprint == from.Entry.Fingerprint && k.readers == 0
	if same {
		k.showLocked(&e)
	}
	k.mu.Unlock()
	if !same {
		k.published(e, false)
	}
	return 0
}

// Extended attributes: user.iris.* shows the entry's metadata.
const (
	xattrPrefix      = "user.iris."
	xattrMetaPrefix  = xattrPrefix + "meta."
	xattrFingerprint = xattrPrefix + "fingerprint"
	xattrContentType = xattrPrefix + "content_type"
	xattrCreatedAt   = xattrPrefix + "created_at"
	xattrExpiresAt   = xattrPrefix + "expires_at"
	xattrTTLHours    = xattrPrefix + "ttl_hours"
	xattrTTL         = xattrPrefix + "ttl"
)

// xattrs returns the entry's attributes by name, in listing order: the
// key's current entry if this inode shows it, else the metadata the inode
// kept while it was open. An inode that shows an old value and kept none
// (never opened: the kernel reached it by a name it had not yet dropped)
// answers ESTALE, and the kernel looks the path up again.
func (k *keyFile) xattrs() ([]string, map[string]string, syscall.Errno) {
	k.mu.Lock()
	pending := k.pending
	k.mu.Unlock()
	if pending {
		return nil, nil, 0
	}
	e, ok := k.refresh()
	if !ok {
		k.mu.Lock()
		a, key, x := k.shown, k.key, k.x
		if x == nil || !x.hasMeta {
			k.mu.Unlock()
			return nil, nil, syscall.ESTALE
		}
		e = a.Entry(k.dir.scope, key)
		x.meta.setIn(&e)
		k.mu.Unlock()
	}
	vals := map[string]string{
		xattrFingerprint: hex.EncodeToString(e.Fingerprint[:]),
		xattrContentType: e.ContentType,
		xattrCreatedAt:   e.CreatedAt.UTC().Format(time.RFC3339Nano),
		xattrExpiresAt:   "",
		xattrTTLHours:    strconv.FormatFloat(e.TTL.Hours(), 'f', -1, 64),
		xattrTTL:         e.TTL.String(),
	}
	if !e.ExpiresAt.IsZero() {
		vals[xattrExpiresAt] = e.ExpiresAt.UTC().Format(time.RFC3339Nano)
	}
	names := []string{xattrFingerprint, xattrContentType, xattrCreatedAt, xattrExpiresAt, xattrTTLHours, xattrTTL}
	for n, v := range e.Meta {
		names = append(names, xattrMetaPrefix+n)
		vals[xattrMetaPrefix+n] = v
	}
	return names, vals, 0
}

func (k *keyFile) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if !strings.HasPrefix(attr, xattrPrefix) {
		// Without touching the store (see absentXattr).
		return 0, absentXattr(attr)
	}
	_, vals, errno := k.xattrs()
	if errno != 0 {
		return 0, errno
	}
	v, ok := vals[attr]
	if !ok {
		return 0, syscall.ENODATA
	}
	if len(dest) < len(v) {
		return uint32(len(v)), syscall.ERANGE
	}
	return uint32(copy(dest, v)), 0
}

func (k *keyFile) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	names, _, errno := k.xattrs()
	if errno != 0 {
		return 0, errno
	}
	var b strings.Builder
	for _, n := range names {
		b.WriteString(n)
		b.WriteByte(0)
	}
	if len(dest) < b.Len() {
		return uint32(b.Len()), syscall.ERANGE
	}
	return uint32(copy(dest, b.String())), 0
}

func (k *keyFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	if k.dir.fs.opts.ReadOnly {
		return syscall.EROFS
	}
	if !strings.HasPrefix(attr, xattrPrefix) {
		return syscall.ENOTSUP
	}
	value := string(data)
	var edit func(e *index.Entry) error
	if flags&xattrCreate != 0 && (attr == xattrContentType || attr == xattrTTL || attr == xattrTTLHours) {
		return syscall.EEXIST // every key has these
	}
	switch {
	case attr == xattrContentType:
		edit = func(e *index.Entry) error { e.ContentType = value; return nil }
	case attr == xattrTTL || attr == xattrTTLHours:
		ttl, err := parseTTLXattr(attr, value)
		if err != nil {
			return syscall.EINVAL
		}
		edit = func(e *index.Entry) error { e.TTL = ttl; return nil }
	case strings.HasPrefix(attr, xattrMetaPrefix):
		name := strings.TrimPrefix(attr, xattrMetaPrefix)
		if store.ValidateMetaName(name) != nil {
			return syscall.EINVAL
		}
		edit = func(e *index.Entry) error {
			_, exists := e.Meta[name]
			if flags&xattrCreate != 0 && exists {
				return errXattrExists
			}
			if flags&xattrReplace != 0 && !exists {
				return errXattrMissing
			}
			if e.Meta == nil {
				e.Meta = map[string]string{}
			}
			e.Meta[name] = value
			return nil
		}
	default:
		return syscall.EPERM // fingerprint, created_at, expires_at: derived, not settable
	}
	return k.editMeta(edit)
}

// setxattr(2) flags.
const (
	xattrCreate  = 0x1 // XATTR_CREATE: fail if it exists
	xattrReplace = 0x2 // XATTR_REPLACE: fail if it does not
)

var (
	errXattrExists  = errors.New("xattr exists")
	errXattrMissing = errors.New("no such xattr")
)

func (k *keyFile) editMeta(edit func(e *index.Entry) error) syscall.Errno {
	k.mu.Lock()
	pending, key := k.pending, k.key
	k.mu.Unlock()
	if pending {
		return syscall.EBUSY
	}
	e, err := k.dir.fs.store.UpdateMeta(k.scope(), key, edit)
	switch {
	case errors.Is(err, errXattrExists):
		return syscall.EEXIST
	case errors.Is(err, errXattrMissing):
		return syscall.ENODATA
	case err != nil:
		return k.dir.fs.errno(err)
	}
	k.shows(&e)
	// A TTL change can shorten the time the kernel may cache the name.
	k.dir.fs.invalidateName(k.dir.EmbeddedInode(), key)
	return 0
}

func (k *keyFile) Removexattr(ctx context.Context, attr string) syscall.Errno {
	if k.dir.fs.opts.ReadOnly {
		return syscall.EROFS
	}
	if !strings.HasPrefix(attr, xattrMetaPrefix) {
		if strings.HasPrefix(attr, xattrPrefix) {
			return syscall.EPERM
		}
		return absentXattr(attr)
	}
	name := strings.TrimPrefix(attr, xattrMetaPrefix)
	return k.editMeta(func(e *index.Entry) error {
		if _, ok := e.Meta[name]; !ok {
			return errXattrMissing
		}
		delete(e.Meta, name)
		return nil
	})
}

// parseTTLXattr reads user.iris.ttl ("6h", "7d", "0" for never) or
// user.iris.ttl_hours (a number of hours).
func parseTTLXattr(attr, value string) (time.Duration, error) {
	value = strings.TrimSpace(value)
	if attr == xattrTTLHours {
		h, err := strconv.ParseFloat(value, 64)
		if err != nil || h < 0 || h > 100*365*24 {
			return 0, errors.New("bad hours")
		}
		return time.Duration(h * float64(time.Hour)), nil
	}
	return quota.ParseTTL(value)
}
