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
	index *gofs.Inode // the _index.json node

	// The cached _index.json, valid while changes == indexGen and until
	// indexUntil (the first expiry among its entries).
	indexMu    sync.Mutex
	indexDoc   []byte
	indexGen   uint64
	indexUntil time.Time
	changes    atomic.Uint64

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
	_ gofs.NodeOnAdder    = (*scopeDir)(nil)
	_ gofs.NodeLookuper   = (*scopeDir)(nil)
	_ gofs.NodeReaddirer  = (*scopeDir)(nil)
	_ gofs.NodeGetattrer  = (*scopeDir)(nil)
	_ gofs.NodeStatfser   = (*scopeDir)(nil)
	_ gofs.NodeCreater    = (*scopeDir)(nil)
	_ gofs.NodeUnlinker   = (*scopeDir)(nil)
	_ gofs.NodeRenamer    = (*scopeDir)(nil)
	_ gofs.NodeMkdirer    = (*scopeDir)(nil)
	_ gofs.NodeRmdirer    = (*scopeDir)(nil)
	_ gofs.NodeSymlinker  = (*scopeDir)(nil)
	_ gofs.NodeLinker     = (*scopeDir)(nil)
	_ gofs.NodeMknoder    = (*scopeDir)(nil)
	_ gofs.NodeSetxattrer = (*scopeDir)(nil)
)

// Setxattr: directories carry no attributes of their own.
func (d *scopeDir) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

func (d *scopeDir) OnAdd(ctx context.Context) {
	v := &virtualFile{fs: d.fs, generate: d.indexJSON}
	d.index = d.NewPersistentInode(ctx, v, gofs.StableAttr{Mode: syscall.S_IFREG})
}

// indexJSON returns the scope's _index.json. The document is kept until the
// scope changes (the store's Watch) or its first entry expires: `ls -l`
// stats it, and regenerating it (38 MB for 100k keys) for every stat cost
// seconds and hundreds of megabytes.
func (d *scopeDir) indexJSON() ([]byte, error) {
	now := d.fs.store.Now()
	d.indexMu.Lock()
	defer d.indexMu.Unlock()
	if d.indexDoc != nil && d.indexGen == d.changes.Load() && (d.indexUntil.IsZero() || now.Before(d.indexUntil)) {
		return d.indexDoc, nil
	}
	gen := d.changes.Load()
	entries, err := d.fs.store.List(d.scope)
	if err != nil {
		return nil, err
	}
	var until time.Time
	for i := range entries {
		if x := entries[i].ExpiresAt; !x.IsZero() && (until.IsZero() || x.Before(until)) {
			until = x
		}
	}
	d.indexDoc = index.SeedIndexJSON(entries, filepath.Join(d.fs.opts.MountPoint, d.scope), now)
	d.indexGen, d.indexUntil = gen, until
	return d.indexDoc, nil
}

// changed records a change of the scope's keys (the cached _index.json is
// stale). It runs on the store's committing goroutine: it only counts.
func (d *scopeDir) changed() { d.changes.Add(1) }

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
		if errno := d.fs.fixedEntry(ctx, d.index, out); errno != 0 {
			return nil, errno
		}
		return d.index, 0
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
	child := d.versionInode(ctx, name, &e)
	kf := child.Operations().(*keyFile)
	kf.fillEntry(out, &e)
	if kf.writing() {
		// A writer's inode: the kernel changes its size on its own as the
		// writer goes, so nobody else may take its name or size from the
		// cache; their next lookup gets a reader's inode.
		out.SetEntryTimeout(noCache)
		out.SetAttrTimeout(noCache)
	}
	return child, 0
}

// versionInode returns the inode showing value e of key name: the current
// child if it shows the same value, else a new inode. A new value gets a new
// inode so that pages the kernel cached for the old value can never be
// served as part of the new one.
func (d *scopeDir) versionInode(ctx context.Context, name string, e *index.Entry) *gofs.Inode {
	pid, _, forWrite := d.retryKind(ctx, name)
	if ch := d.GetChild(name); ch != nil {
		if kf, ok := ch.Operations().(*keyFile); ok && kf.reusable(e, pid, forWrite) {
			return ch
		}
	}
	kf := &keyFile{fs: d.fs, dir: d, key: name, entry: *e}
	if forWrite {
		kf.reservedFor = pid
	}
	return d.NewInode(ctx, kf, gofs.StableAttr{Mode: syscall.S_IFREG})
}

func (d *scopeDir) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	entries, err := d.fs.store.List(d.scope)
	if err != nil {
		return nil, d.fs.errno(err)
	}
	list := make([]fuse.DirEntry, 0, len(entries)+1)
	list = append(list, fuse.DirEntry{Name: indexName, Mode: syscall.S_IFREG})
	for i := range entries {
		list = append(list, fuse.DirEntry{Name: entries[i].Key, Mode: syscall.S_IFREG})
	}
	return gofs.NewListDirStream(list), 0
}

// Create starts a new value. Nothing is published until the file is closed.
func (d *scopeDir) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	if d.fs.opts.ReadOnly {
		return nil, nil, 0, syscall.EROFS
	}
	if err := store.ValidateKey(name); err != nil {
		return nil, nil, 0, d.fs.errno(err)
	}
	kf := &keyFile{fs: d.fs, dir: d, key: name, pending: true}
	kf.pendingAttr.Mode = mode & 0o7777
	if caller, ok := fuse.FromContext(ctx); ok && caller.Uid != d.fs.opts.UID {
		kf.pendingAttr.UID, kf.pendingAttr.GID = caller.Uid, caller.Gid
	}
	kf.writers = 1 // h, released in its Release
	h := &writeHandle{node: kf, truncated: true, appending: flags&syscall.O_APPEND != 0}
	// A key that exists although the kernel did not know it: open(O_CREAT)
	// keeps its mode and owner, and without O_TRUNC its bytes; O_EXCL fails.
	if _, err := d.fs.store.Lookup(d.scope, name); err == nil {
		if flags&syscall.O_EXCL != 0 {
			return nil, nil, 0, syscall.EEXIST
		}
		kf.pendingAttr.Mode, kf.pendingAttr.UID, kf.pendingAttr.GID = 0, 0, 0
		h.truncated = flags&syscall.O_TRUNC != 0
	}
	ch := d.NewInode(ctx, kf, gofs.StableAttr{Mode: syscall.S_IFREG})
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
