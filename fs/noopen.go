package fs

// No-open reads, on a --read-only mount.
//
// A FUSE open costs two round trips (OPEN, and RELEASE after close), about
// 45 µs here against 4.6 µs for a whole open+read+close on tmpfs. On a
// read-only mount the files answer OPEN with ENOSYS. The kernel then sets
// no_open for the connection: it never sends OPEN or RELEASE for a regular
// file again, treats every file as FOPEN_KEEP_CACHE, and sends READ with
// file handle 0, which go-fuse hands to the node's Read (NodeReader) with
// a nil FileHandle. FLUSH, which the kernel still sends at close for a
// file opened that way, answers ENOSYS too, and the kernel stops sending
// it (no_flush, also for the whole connection: a read-only mount has
// nothing to flush). A hot open+read+close then reaches the daemon not at
// all.
//
// That is safe because what a file shows never changes under its inode:
//   - a key file is one value (fingerprint) of its key (scopeDir.
//     versionInode); a new value gets a new inode, and the kernel's name for
//     the key is invalidated (FS.storeChanged), so the next open looks it up
//     and reads the new value, while a descriptor opened before goes on
//     reading the value it opened;
//   - a virtual file (.stats, _index.json) is shown as one inode per
//     generated content, looked up again at every open (virtual.go).
//
// The contract's verify-on-open becomes verify-before-first-byte: the
// first READ of a key file's inode opens its value with the store's
// OpenVersion, which verifies it against the fingerprint (or finds it in
// the hot LRU, or finds the blob unchanged since it was last verified).
// A mismatch fails that READ with EIO, logged with scope and key and
// counted in .stats by the store, as a failed open is. The verified value
// is kept with the inode (the LRU's copy of a small value, the open blob
// file of a large one) until the kernel forgets the inode, so the value a
// file showed stays readable after the key has moved on, as an open
// descriptor's would. Before each READ of a blob file, its identity
// (inode, size, mtime, ctime) is checked against the one verified; a blob
// changed on disk since is verified again before any more of it is served.
//
// What the kernel serves from its page cache is never seen here: the
// store's per-key read counts (Stats.Reads) and its hits/misses count one
// read per fetch of a value into the kernel (the first read of an inode,
// and again after the kernel forgot it), not one per open.
//
// Writable mounts keep OPEN: a writer's staged value needs its handle, and
// no_open would hold for every file of the connection.

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/store"
)

var (
	_ gofs.NodeReader      = (*keyFile)(nil)
	_ gofs.NodeFlusher     = (*keyFile)(nil)
	_ gofs.NodeOnForgetter = (*keyFile)(nil)
)

// noOpen reports whether files of this mount are read without being
// opened.
func (f *FS) noOpen() bool { return f.opts.ReadOnly }

// pinnedValues are the values key files hold for no-open reads, so that
// unmounting can close their blob files.
type pinnedValues struct {
	mu sync.Mutex
	m  map[*keyFile]struct{}
}

func (p *pinnedValues) add(k *keyFile) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.m == nil {
		p.m = map[*keyFile]struct{}{}
	}
	p.m[k] = struct{}{}
}

func (p *pinnedValues) remove(k *keyFile) {
	p.mu.Lock()
	defer p.mu.Unlock()
	delete(p.m, k)
}

// closeAll drops every pinned value (at unmount).
func (p *pinnedValues) closeAll() {
	p.mu.Lock()
	ks := make([]*keyFile, 0, len(p.m))
	for k := range p.m {
		ks = append(ks, k)
	}
	p.mu.Unlock()
	for _, k := range ks {
		k.unpin()
	}
}

// Read serves a READ: through the handle of an open file (writable
// mounts), or, for a file that was never opened (read-only mounts), from
// the verified value this inode shows.
func (k *keyFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if fr, ok := f.(gofs.FileReader); ok {
		return fr.Read(ctx, dest, off)
	}
	for attempt := 0; ; attempt++ {
		v, errno := k.pinned()
		if errno != 0 {
			return nil, errno
		}
		if b, ok := v.Bytes(); ok {
			if off >= int64(len(b)) {
				return fuse.ReadResultData(nil), 0
			}
			return fuse.ReadResultData(b[off:min(off+int64(len(dest)), int64(len(b)))]), 0
		}
		n, err := v.ReadAt(dest, off)
		if errors.Is(err, os.ErrClosed) && attempt == 0 {
			continue // unpinned meanwhile (a spurious forget): pin it again
		}
		if err != nil && !errors.Is(err, io.EOF) {
			k.dir.fs.log.Error("read failed", "scope", k.scope(), "key", k.name(), "err", err)
			return nil, syscall.EIO
		}
		return fuse.ReadResultData(dest[:n]), 0
	}
}

// pinned returns the verified value this inode shows, opening (and so
// verifying) it at the first read, and again when its blob file changed on
// disk since it was verified.
func (k *keyFile) pinned() (*store.Value, syscall.Errno) {
	x := k.extraNow()
	x.valMu.Lock()
	defer x.valMu.Unlock()
	if v := x.val; v != nil {
		if v.Unchanged() {
			return v, 0
		}
		x.val = nil
		v.Close()
	}
	k.mu.Lock()
	e, key := k.shown.Entry(k.dir.scope, k.key), k.key
	k.mu.Unlock()
	scope := k.scope()
	v, err := k.dir.fs.store.OpenVersion(e)
	if err != nil && k.dir.fs.heal(scope, key, err) {
		// Restored: the same bytes are readable again, or the key has
		// another value, on another inode.
		v, err = k.dir.fs.store.OpenVersion(e)
	}
	switch {
	case errors.Is(err, store.ErrNotFound):
		// The value expired or was removed before its first byte was
		// read: like a file removed over NFS.
		return nil, syscall.ESTALE
	case err != nil:
		return nil, k.dir.fs.errno(err) // EIO for a corrupt value, logged and counted by the store
	}
	x.val = v
	k.dir.fs.pins.add(k)
	return v, 0
}

// unpin closes the value kept for no-open reads; the next read opens it
// again.
func (k *keyFile) unpin() {
	k.mu.Lock()
	x := k.x
	k.mu.Unlock()
	if x == nil {
		return // never read: nothing kept (the common case, after a listing)
	}
	x.valMu.Lock()
	v := x.val
	x.val = nil
	x.valMu.Unlock()
	if v != nil {
		v.Close()
		k.dir.fs.pins.remove(k)
	}
}

// OnForget runs when the kernel has forgotten the inode: nothing will read
// it again.
func (k *keyFile) OnForget() { k.unpin() }

// Flush answers a close(2): through the handle of an open file; a file
// that was never opened (read-only mount) has nothing to flush, and ENOSYS
// tells the kernel to send no FLUSH again.
func (k *keyFile) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	if fl, ok := f.(gofs.FileFlusher); ok {
		return fl.Flush(ctx)
	}
	return noFlush(k.dir.fs, f)
}

// noFlush is the answer to a FLUSH of a file without a flushing handle.
func noFlush(fs *FS, f gofs.FileHandle) syscall.Errno {
	if f == nil && fs.noOpen() {
		return syscall.ENOSYS
	}
	return 0
}
