package fs

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// indexName is each scope's virtual index, in the predecessor's format.
const indexName = "_index.json"

// scopeDir is one scope: a regular file per live key, and _index.json.
type scopeDir struct {
	gofs.Inode
	fs    *FS
	scope string
	index *virtualFile // names _index.json (see virtualFile.lookup)

	// The size of _index.json, valid while changes == indexGen and until
	// indexUntil (the first expiry among its entries).
	indexMu    sync.Mutex
	indexSized bool
	indexBytes int64
	indexGen   uint64
	indexUntil time.Time
	changes    atomic.Uint64
	// handouts counts the new key inodes given out for names in the scope
	// (lookups, creates, listings): a name can only gain a child in the
	// tree after one. A listing that made inodes ahead of time compares it
	// to know that no name it found free was taken meanwhile.
	handouts atomic.Uint64

	// listingStale says the kernel's cached listing may be out of date.
	listingStale atomic.Bool
	// What the last listing of the scope found, for deciding whether the
	// kernel may cache the next one (see cacheListing).
	listMu     sync.Mutex
	listGen    uint64    // changes when listed
	listKnown  bool      // a listing was taken at listGen
	listExpiry time.Time // its first expiry; zero: none expires
	listTimer  *time.Timer

	// retries notes, per name and caller, an open refused with ESTALE
	// because it would have mixed readers and a writer on one inode: true
	// for a writer. The caller's next lookups of the name get an inode of
	// the kind it needs, until its open succeeds.
	retryMu sync.Mutex
	retries map[retryKey]bool
}

type retryKey struct {
	name string
	pid  uint32
}

// maxRetries bounds the notes left by callers that never came back.
const maxRetries = 4096

func callerPid(ctx context.Context) uint32 {
	if c, ok := fuse.FromContext(ctx); ok {
		return c.Pid
	}
	return 0
}

func (d *scopeDir) noteRetry(ctx context.Context, name string, writer bool) {
	pid := callerPid(ctx)
	if pid == 0 {
		return
	}
	d.retryMu.Lock()
	defer d.retryMu.Unlock()
	if d.retries == nil || len(d.retries) >= maxRetries {
		d.retries = map[retryKey]bool{}
	}
	d.retries[retryKey{name, pid}] = writer
}

func (d *scopeDir) clearRetry(ctx context.Context, name string) {
	pid := callerPid(ctx)
	d.retryMu.Lock()
	defer d.retryMu.Unlock()
	delete(d.retries, retryKey{name, pid})
}

// retryKind says whether the caller of ctx is retrying an open of name,
// and whether as a writer.
func (d *scopeDir) retryKind(ctx context.Context, name string) (pid uint32, retrying, writer bool) {
	pid = callerPid(ctx)
	d.retryMu.Lock()
	defer d.retryMu.Unlock()
	writer, retrying = d.retries[retryKey{name, pid}]
	return pid, retrying, writer
}

var (
	_ gofs.NodeOnAdder        = (*scopeDir)(nil)
	_ gofs.NodeLookuper       = (*scopeDir)(nil)
	_ gofs.NodeOpendirHandler = (*scopeDir)(nil)
	_ gofs.NodeGetattrer      = (*scopeDir)(nil)
	_ gofs.NodeStatfser       = (*scopeDir)(nil)
	_ gofs.NodeCreater        = (*scopeDir)(nil)
	_ gofs.NodeUnlinker       = (*scopeDir)(nil)
	_ gofs.NodeRenamer        = (*scopeDir)(nil)
	_ gofs.NodeMkdirer        = (*scopeDir)(nil)
	_ gofs.NodeRmdirer        = (*scopeDir)(nil)
	_ gofs.NodeSymlinker      = (*scopeDir)(nil)
	_ gofs.NodeLinker         = (*scopeDir)(nil)
	_ gofs.NodeMknoder        = (*scopeDir)(nil)
	_ gofs.NodeSetxattrer     = (*scopeDir)(nil)
	_ gofs.NodeGetxattrer     = (*scopeDir)(nil)
)

// Getxattr: directories carry no attributes of their own.
func (d *scopeDir) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, absentXattr(attr)
}

// Setxattr: directories carry no attributes of their own.
func (d *scopeDir) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

func (d *scopeDir) OnAdd(ctx context.Context) {
	d.index = &virtualFile{fs: d.fs, generate: d.indexJSON, size: d.indexSize,
		generation: d.changes.Load, generateUntil: d.indexJSONUntil}
	d.NewPersistentInode(ctx, d.index, gofs.StableAttr{Mode: syscall.S_IFREG})
}

// indexJSON generates the scope's _index.json for an open.
func (d *scopeDir) indexJSON() ([]byte, error) {
	doc, _, err := d.indexJSONUntil()
	return doc, err
}

// indexJSONUntil generates the scope's _index.json and says until when it
// stays the same if the scope does not change: its first expiry.
func (d *scopeDir) indexJSONUntil() ([]byte, time.Time, error) {
	entries, err := d.fs.store.List(d.scope)
	if err != nil {
		return nil, time.Time{}, err
	}
	var first time.Time
	for i := range entries {
		if x := entries[i].ExpiresAt; !x.IsZero() && (first.IsZero() || x.Before(first)) {
			first = x
		}
	}
	return index.SeedIndexJSON(entries, d.indexDir(), d.fs.store.Now()), first, nil
}

func (d *scopeDir) indexDir() string { return filepath.Join(d.fs.opts.MountPoint, d.scope) }

// indexSize is the size of the scope's _index.json. It is kept until the
// scope changes (the store's Watch) or its first entry expires: `ls -l`
// stats the file, and sizing it costs a listing of the scope.
func (d *scopeDir) indexSize() (int64, error) {
	now := d.fs.store.Now()
	d.indexMu.Lock()
	defer d.indexMu.Unlock()
	if d.indexSized && d.indexGen == d.changes.Load() && (d.indexUntil.IsZero() || now.Before(d.indexUntil)) {
		return d.indexBytes, nil
	}
	gen := d.changes.Load()
	// One pass over the index, holding no entries: a scope of 100k keys
	// would otherwise allocate ~30 MB (entries, content types) to size it.
	z := index.NewSeedIndexSizer(d.indexDir(), now)
	first := int64(index.NoTime)
	err := d.fs.store.ForEachLive(d.scope, func(e *index.Entry) {
		z.Add(e)
		if x := index.PackTime(e.ExpiresAt); x != index.NoTime && (first == index.NoTime || x < first) {
			first = x
		}
	})
	if err != nil {
		return 0, err
	}
	d.indexBytes = z.Size()
	d.indexSized, d.indexGen, d.indexUntil = true, gen, index.UnpackTime(first)
	return d.indexBytes, nil
}

// changed records a change of the scope's keys (the cached _index.json and
// the kernel's cached listing are stale). It runs on the store's committing
// goroutine: it only counts and flags; the notifier tells the kernel.
func (d *scopeDir) changed() {
	d.changes.Add(1)
	d.listingStale.Store(true)
}

// invalidateListing makes the kernel drop its cached listing of the scope
// (FOPEN_CACHE_DIR) and the directory's attributes, once for any number of
// changes since the last time. Runs on the notifier.
func (d *scopeDir) invalidateListing() {
	if d.listingStale.Swap(false) {
		_ = d.NotifyContent(0, 0)
	}
}

// relistLater is for a listing served after the scope changed: the kernel
// may cache it after it processed the change's invalidation, so it is
// invalidated once more when the answer has surely arrived.
func (d *scopeDir) relistLater() {
	time.AfterFunc(listingRaceDelay, func() {
		d.listingStale.Store(true)
		d.fs.notes.post(d.invalidateListing)
	})
}

// listingRaceDelay is how long after a stale READDIR answer its second
// invalidation goes: far longer than the kernel takes to take in an answer.
const listingRaceDelay = 20 * time.Millisecond

func (d *scopeDir) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	d.fs.dirAttr(&out.Attr)
	out.SetTimeout(d.fs.opts.CacheTimeout)
	return 0
}

// Statfs reports this scope's quota and usage, so `df` on a scope
// directory shows how full that scope is.
func (d *scopeDir) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	st, err := d.fs.store.Stats()
	if err != nil {
		return d.fs.errno(err)
	}
	for _, sc := range st.Scopes {
		if sc.Name == d.scope {
			statfs(out, sc.QuotaBytes, sc.Bytes, sc.Keys)
			return 0
		}
	}
	return syscall.ENOENT
}

func (d *scopeDir) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == indexName {
		return d.index.lookup(ctx, d.EmbeddedInode(), name, out)
	}
	if err := store.ValidateKey(name); err != nil {
		if errors.Is(err, store.ErrNameTooLong) {
			return nil, syscall.ENAMETOOLONG // as any Linux filesystem answers past NAME_MAX
		}
		return nil, syscall.ENOENT // no such file can exist; creating it says why
	}
	e, err := d.fs.store.Lookup(d.scope, name)
	if err != nil && d.fs.heal(d.scope, name, err) {
		e, err = d.fs.store.Lookup(d.scope, name)
	}
	if err != nil {
		return nil, d.fs.errno(err)
	}
	a := e.Attrs()
	return d.entryInode(ctx, name, &a, &e, out), 0
}

// entryInode returns the inode showing the value of attributes a (full:
// its entry, if known) of key name and fills out with its attributes and
// how long the kernel may keep them.
func (d *scopeDir) entryInode(ctx context.Context, name string, a *index.Attrs, full *index.Entry, out *fuse.EntryOut) *gofs.Inode {
	child := d.versionInode(ctx, name, a, full)
	kf := child.Operations().(*keyFile)
	kf.fillEntry(out, a)
	if kf.writing() {
		// A writer's inode: the kernel changes its size on its own as the
		// writer goes, so nobody else may take its name or size from the
		// cache; their next lookup gets a reader's inode.
		out.SetEntryTimeout(noCache)
		out.SetAttrTimeout(noCache)
	}
	return child
}

// versionInode returns the inode showing value e of key name: the current
// child if it shows the same value, else a new inode. A new value gets a new
// inode so that pages the kernel cached for the old value can never be
// served as part of the new one.
func (d *scopeDir) versionInode(ctx context.Context, name string, a *index.Attrs, full *index.Entry) *gofs.Inode {
	pid, _, forWrite := d.retryKind(ctx, name)
	if ch := d.GetChild(name); ch != nil {
		if kf, ok := ch.Operations().(*keyFile); ok && kf.reusable(a, full, pid, forWrite) {
			return ch
		}
	}
	kf := &keyFile{dir: d, key: name, shown: *a}
	if forWrite {
		kf.x = &keyExtra{reservedFor: pid}
	}
	d.handouts.Add(1)
	return d.NewInode(ctx, kf, d.fs.keyFileAttr())
}

// OpendirHandle lets the kernel keep a scope's listing (FOPEN_CACHE_DIR)
// until the scope changes or an entry in it is about to expire: a second
// `ls` of 100,000 keys then costs no request at all. Every change drops
// the kernel's copy (invalidateListing), and so does the approach of the
// listing's first expiry (noteListing), so no cached listing outlives an
// entry in it.
func (d *scopeDir) OpendirHandle(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	h := &dirHandle{dir: d}
	if d.cacheListing() {
		return h, fuse.FOPEN_CACHE_DIR, 0
	}
	// Not known whether this listing may be cached: list now, and decide.
	if errno := h.list(); errno != 0 {
		return nil, 0, errno
	}
	if d.cacheListing() {
		return h, fuse.FOPEN_CACHE_DIR, 0
	}
	return h, 0, 0
}

// listingExpiryMargin is how long before a listed entry expires its
// listing stops being cached: the invalidation is sent then, and must reach
// the kernel before the instant.
const listingExpiryMargin = time.Second

// cacheListing reports whether the kernel may cache the scope's listing:
// the last listing is current and nothing in it expires soon.
func (d *scopeDir) cacheListing() bool {
	d.listMu.Lock()
	defer d.listMu.Unlock()
	return d.fs.opts.CacheTimeout > listingExpiryMargin &&
		d.listKnown && d.listGen == d.changes.Load() &&
		(d.listExpiry.IsZero() || d.listExpiry.Sub(d.fs.store.Now()) > listingExpiryMargin)
}

// noteListing records a listing taken at gen whose first expiry is
// expiry, and arms the invalidation of the kernel's copy ahead of it (or
// at the mount's cache timeout, the longest the kernel keeps anything).
func (d *scopeDir) noteListing(gen uint64, expiry time.Time) {
	d.listMu.Lock()
	defer d.listMu.Unlock()
	if d.listKnown && gen < d.listGen {
		return // an older listing finishing late
	}
	d.listGen, d.listKnown, d.listExpiry = gen, true, expiry
	if d.listTimer != nil {
		d.listTimer.Stop()
		d.listTimer = nil
	}
	// The kernel keeps a cached listing until told otherwise: tell it at
	// the mount's cache timeout, or before the first entry expires.
	wait := d.fs.opts.CacheTimeout
	if !expiry.IsZero() {
		wait = min(wait, expiry.Sub(d.fs.store.Now())-listingExpiryMargin)
	}
	if wait > 0 {
		d.listTimer = time.AfterFunc(wait, func() {
			d.listingStale.Store(true)
			d.fs.notes.post(d.invalidateListing)
		})
	}
}

// Create starts a new value. Nothing is published until the file is closed.
func (d *scopeDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if d.fs.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if err := store.ValidateKey(name); err != nil {
		return nil, nil, 0, d.fs.errno(err)
	}
	x := &keyExtra{writers: 1, writeHandles: 1} // h, released in its Release
	kf := &keyFile{dir: d, key: name, pending: true, x: x}
	x.pendingAttr.Mode = mode & 0o7777
	if caller, ok := fuse.FromContext(ctx); ok && caller.Uid != d.fs.opts.UID {
		x.pendingAttr.UID, x.pendingAttr.GID = caller.Uid, caller.Gid
	}
	h := &writeHandle{node: kf, truncated: true, appending: flags&syscall.O_APPEND != 0}
	// A key that exists although the kernel did not know it: open(O_CREAT)
	// keeps its mode and owner, and without O_TRUNC its bytes; O_EXCL fails.
	if _, err := d.fs.store.Lookup(d.scope, name); err == nil {
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		x.pendingAttr.Mode, x.pendingAttr.UID, x.pendingAttr.GID = 0, 0, 0
		h.truncated = flags&syscall.O_TRUNC != 0
	}
	d.handouts.Add(1)
	ch := d.NewInode(ctx, kf, d.fs.keyFileAttr())
	kf.fillAttr(&out.Attr, h)
	out.SetEntryTimeout(d.fs.opts.CacheTimeout)
	out.SetAttrTimeout(noCache)
	return ch, h, fuse.FOPEN_DIRECT_IO, 0
}

func (d *scopeDir) Unlink(ctx context.Context, name string) syscall.Errno {
	if name == indexName {
		return syscall.EPERM
	}
	if d.fs.opts.ReadOnly {
		return syscall.EROFS
	}
	var pending bool
	if ch := d.GetChild(name); ch != nil {
		if kf, ok := ch.Operations().(*keyFile); ok {
			pending = kf.markUnlinked()
		}
	}
	err := d.fs.store.Delete(d.scope, name)
	if pending && errors.Is(err, store.ErrNotFound) {
		return 0 // a file being created: it will now never be published
	}
	return d.fs.errno(err)
}

// Rename moves a key within its scope. Between scopes it fails with EXDEV,
// so mv copies (the copy is checked against the target scope's quota).
func (d *scopeDir) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	if name == indexName || newName == indexName {
		return syscall.EPERM
	}
	if d.fs.opts.ReadOnly {
		return syscall.EROFS
	}
	to, ok := newParent.(*scopeDir)
	if !ok {
		return syscall.EPERM
	}
	if to.scope != d.scope {
		return syscall.EXDEV
	}
	if err := store.ValidateKey(newName); err != nil {
		return d.fs.errno(err)
	}
	const renameNoReplace, renameExchange = 1, 2
	if flags&renameExchange != 0 {
		return syscall.EINVAL
	}
	if flags&renameNoReplace != 0 {
		if _, err := d.fs.store.Lookup(d.scope, newName); err == nil {
			return syscall.EEXIST
		}
	}
	if err := d.fs.store.Rename(d.scope, name, newName); err != nil {
		return d.fs.errno(err)
	}
	src := d.GetChild(name)
	// The file renamed over is unlinked: its open descriptors see nlink
	// 0, and a value being written to it is never published.
	if dst := d.GetChild(newName); dst != nil && dst != src && name != newName {
		if kf, ok := dst.Operations().(*keyFile); ok {
			kf.markUnlinked()
		}
	}
	if src != nil {
		if kf, ok := src.Operations().(*keyFile); ok {
			kf.renamed(newName)
		}
	}
	return 0
}

// A scope holds only regular files.

func (d *scopeDir) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *scopeDir) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (d *scopeDir) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *scopeDir) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (d *scopeDir) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
