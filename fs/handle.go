package fs

import (
	"context"
	"errors"
	"io"
	"sync"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/store"
)

// readHandle reads one verified value.
type readHandle struct {
	v    *store.Value
	node *keyFile
}

var (
	_ gofs.FileReader          = (*readHandle)(nil)
	_ gofs.FileReleaser        = (*readHandle)(nil)
	_ gofs.FileFlusher         = (*readHandle)(nil)
	_ gofs.FilePassthroughFder = (*readHandle)(nil)
)

// PassthroughFd lets the kernel read a value that is not held in memory
// straight from its blob file (FUSE passthrough, root only; go-fuse falls
// back to READ requests where the kernel refuses). That is safe because the
// blob was verified when this handle was opened and is never written again:
// a new value is a new blob.
func (h *readHandle) PassthroughFd() (int, bool) {
	if f := h.v.File(); f != nil {
		return int(f.Fd()), true
	}
	return 0, false
}

func (h *readHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	n, err := h.v.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, syscall.EIO
	}
	return fuse.ReadResultData(dest[:n]), 0
}

func (h *readHandle) Flush(ctx context.Context) syscall.Errno { return 0 }

func (h *readHandle) Release(ctx context.Context) syscall.Errno {
	h.v.Close()
	h.node.release(false)
	return 0
}

// writeHandle stages a new value for its key in a store.Writer and
// publishes it when the file is flushed (close) or fsynced. Until then
// readers of the key see the published value. The writer is made on the
// first change, so an open that only reads, or that truncates to zero
// first (O_TRUNC), never copies the old value.
type writeHandle struct {
	node *keyFile

	mu        sync.Mutex
	w         *store.Writer
	base      *store.Value // the published value, for reads before any change
	truncated bool         // the next writer starts empty
	// appending (O_APPEND): every write goes to the end of the staged
	// value, whatever offset the kernel computed from its idea of the size
	// (which is the published value's while the write is staged).
	appending bool
	// mtimeSeq is the node's mtimeSeq when this handle was opened (or last
	// published): a time set after it is applied to what it publishes.
	mtimeSeq uint64
	// failed is the errno of a write or truncate the store refused (quota,
	// space, I/O). The staged value then lacks what the caller meant to
	// write, so it is never published: the key keeps its previous value,
	// and every later write, fsync and close reports the error.
	failed syscall.Errno
	// uncounted is set once the handle no longer counts as a writer.
	uncounted bool
	// staleName is set when an fsync published a value and the kernel's
	// name for the key is being invalidated in the background.
	staleName bool
	// deferred is set when a close left a duplicate of the descriptor open
	// in the caller and so published nothing (see Flush).
	deferred bool
}

var (
	_ gofs.FileReader    = (*writeHandle)(nil)
	_ gofs.FileWriter    = (*writeHandle)(nil)
	_ gofs.FileFlusher   = (*writeHandle)(nil)
	_ gofs.FileFsyncer   = (*writeHandle)(nil)
	_ gofs.FileReleaser  = (*writeHandle)(nil)
	_ gofs.FileGetattrer = (*writeHandle)(nil)
)

// size is the staged value's size, if a change is staged.
func (h *writeHandle) size() (int64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w == nil {
		return 0, false
	}
	return h.w.Size(), true
}

func (h *writeHandle) dirty() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.w != nil
}

// writer returns the staging writer, making it on first use. Callers hold mu.
func (h *writeHandle) writer() (*store.Writer, syscall.Errno) {
	if h.w != nil {
		return h.w, 0
	}
	k := h.node
	k.mu.Lock()
	key := k.key
	opts := store.PutOptions{Inherit: true, Base: !h.truncated}
	if k.pending {
		// The mode and owner given at create; a published key's inode
		// inherits its value's (chmod, chown since then included).
		pa := k.extra().pendingAttr
		opts.Mode, opts.UID, opts.GID = pa.Mode, pa.UID, pa.GID
	}
	k.mu.Unlock()
	w, err := k.dir.fs.store.NewWriter(k.scope(), key, opts)
	if err != nil {
		return nil, k.dir.fs.errno(err)
	}
	h.w = w
	return w, 0
}

func (h *writeHandle) Write(ctx context.Context, data []byte, off int64) (uint32, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failed != 0 {
		return 0, h.failed
	}
	w, errno := h.writer()
	if errno != 0 {
		// Nothing of data is staged: as for a failed write, this value
		// may no longer be published (a later write would leave a hole).
		h.failed = errno
		return 0, errno
	}
	if h.appending {
		off = w.Size()
	}
	n, err := w.WriteAt(data, off)
	if err != nil {
		h.failed = h.node.dir.fs.errno(err)
		return 0, h.failed
	}
	return uint32(n), 0
}

func (h *writeHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	h.mu.Lock()
	defer h.mu.Unlock()
	var r io.ReaderAt
	switch {
	case h.w != nil:
		r = h.w
	case h.truncated:
		return fuse.ReadResultData(nil), 0
	default:
		if h.base == nil {
			k := h.node
			k.mu.Lock()
			key, pending := k.key, k.pending
			k.mu.Unlock()
			if pending {
				return fuse.ReadResultData(nil), 0
			}
			v, err := k.dir.fs.store.Open(k.scope(), key)
			if err != nil {
				return nil, k.dir.fs.errno(err)
			}
			h.base = v
		}
		r = h.base
	}
	n, err := r.ReadAt(dest, off)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil, h.node.dir.fs.errno(err)
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// truncate sets the staged value's size; to zero, it skips copying the old
// value altogether.
func (h *writeHandle) truncate(size int64) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.failed != 0 {
		return h.failed
	}
	if h.w == nil && size == 0 {
		h.truncated = true
	}
	w, errno := h.writer()
	if errno != 0 {
		h.failed = errno
		return errno
	}
	if err := w.Truncate(size); err != nil {
		h.failed = h.node.dir.fs.errno(err)
		return h.failed
	}
	return 0
}

func (h *writeHandle) Getattr(ctx context.Context, out *fuse.AttrOut) syscall.Errno {
	return h.node.Getattr(ctx, h, out)
}

// publish commits the staged value. A file created through the mount is
// published even if nothing was written (touch makes an empty key), and so
// is one opened with O_TRUNC (it becomes empty).
func (h *writeHandle) publish(atClose bool) syscall.Errno {
	h.mu.Lock()
	defer h.mu.Unlock()
	k := h.node
	if atClose {
		defer func() {
			// A value an fsync published left the kernel's name to be
			// invalidated in the background; close waits for it, as for a
			// value published at close, so that a stat after close never
			// shows the value before.
			if h.staleName {
				h.staleName = false
				_ = k.dir.NotifyEntry(k.name())
			}
		}()
	}
	k.mu.Lock()
	pending, unlinked := k.pending, k.unlinked
	k.mu.Unlock()
	if unlinked {
		if h.w != nil {
			h.w.Abort()
			h.w = nil
		}
		return 0
	}
	if h.failed != 0 {
		if h.w != nil {
			h.w.Abort()
			h.w = nil
		}
		k.abandoned(atClose)
		return h.failed
	}
	// open(O_TRUNC) with nothing written after it is a change too: the
	// key becomes empty (`: > file`).
	if h.w == nil && !pending && !h.truncated {
		return 0
	}
	w, errno := h.writer()
	if errno != 0 {
		k.abandoned(atClose)
		return errno
	}
	h.w = nil
	h.truncated = false
	if h.base != nil {
		h.base.Close()
		h.base = nil
	}
	if err := h.lateAttrs(w, pending); err != nil {
		w.Abort()
		k.abandoned(atClose)
		return k.dir.fs.errno(err)
	}
	e, err := w.Commit()
	if err != nil {
		k.abandoned(atClose)
		return k.dir.fs.errno(err)
	}
	if k.published(e, atClose) {
		h.staleName = true
	}
	return 0
}

// lateAttrs gives the value about to be published what was set on the file
// while it was staged: the mode and owner of a new file (its writer was
// made at the first write, with the attributes of that moment), and a time
// set with utimensat before close (cp -p, touch), which the commit's
// "modified now" would otherwise replace. They go in the same commit.
func (h *writeHandle) lateAttrs(w *store.Writer, wasPending bool) error {
	k := h.node
	k.mu.Lock()
	x := k.extra()
	pa := x.pendingAttr
	mtime, lateTime := x.mtime, x.mtimeSeq > h.mtimeSeq
	h.mtimeSeq = x.mtimeSeq
	k.mu.Unlock()
	if !wasPending && !lateTime {
		return nil
	}
	return w.Update(func(o *store.PutOptions) {
		if wasPending && pa.Mode != 0 {
			o.Mode = pa.Mode
		}
		if wasPending && (pa.UID != 0 || pa.GID != 0) {
			o.UID, o.GID = pa.UID, pa.GID
		}
		if lateTime {
			o.ModTime = mtime
		}
	})
}

// Flush runs on every close(2) of the file: its result is close's result,
// so a value whose close returned 0 is published and on disk.
// Flush is a close(). A close with nothing written since the open, while
// the caller keeps a duplicate of the descriptor, publishes nothing: a
// shell's `cmd > file` opens the file, moves the descriptor onto cmd's
// output and closes the original before cmd writes, and publishing there
// would commit an empty value, durably, that readers would see until cmd's
// output is published by a second commit. Only a duplicate in the closing
// process is seen (a forked child's close still publishes), and only when
// this is the inode's sole handle, so that a descriptor of another open of
// the same inode is never taken for one. A close after writes publishes
// without looking (the /proc scan costs a few syscalls per descriptor).
func (h *writeHandle) Flush(ctx context.Context) syscall.Errno {
	k := h.node
	if h.onlyEmptied() && k.soleHandle() && k.dir.fs.heldByCaller(ctx, k.StableAttr().Ino) {
		h.mu.Lock()
		h.deferred = true
		failed := h.failed
		h.mu.Unlock()
		return failed
	}
	errno := h.publish(true)
	h.mu.Lock()
	h.deferred = false
	h.mu.Unlock()
	h.stopCounting()
	return errno
}

// onlyEmptied reports whether the handle's only change is that it empties
// the key (O_TRUNC, or a new file) with nothing written since.
func (h *writeHandle) onlyEmptied() bool {
	h.mu.Lock()
	staged, truncated := h.w != nil, h.truncated
	h.mu.Unlock()
	if staged {
		return false
	}
	k := h.node
	k.mu.Lock()
	defer k.mu.Unlock()
	return truncated || k.pending
}

// stopCounting ends this handle's count as its inode's writer. That is at
// its first close, not at RELEASE, which the kernel sends later and
// asynchronously: a reader that opens the file right after the writer's
// close must get this inode (same inode number) without an ESTALE retry.
// Writes through a surviving duplicate of the descriptor are still staged
// and published, but no longer keep readers off the inode.
func (h *writeHandle) stopCounting() {
	h.mu.Lock()
	counted := !h.uncounted
	h.uncounted = true
	h.mu.Unlock()
	if counted {
		h.node.release(true)
	}
}

func (h *writeHandle) Fsync(ctx context.Context, flags uint32) syscall.Errno { return h.publish(false) }

func (h *writeHandle) Release(ctx context.Context) syscall.Errno {
	h.mu.Lock()
	deferred := h.deferred
	h.mu.Unlock()
	if deferred {
		// A close published nothing because a duplicate stayed open, and
		// that duplicate never had a close of its own. Every descriptor
		// leaves a process's table through close (exec and exit included),
		// so a FLUSH follows; this is a guard against a /proc answer that
		// was wrong, not a path a process takes. Nobody waits for RELEASE
		// to report an error, so what was staged is published rather than
		// lost.
		if errno := h.publish(true); errno != 0 {
			h.node.dir.fs.log.Warn("publish at release failed", "scope", h.node.scope(), "key", h.node.name(), "errno", errno.Error())
		}
	}
	h.stopCounting()
	h.node.mu.Lock()
	h.node.extra().writeHandles--
	h.node.mu.Unlock()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.w != nil { // a publish that failed, or writes after the last close
		h.w.Abort()
		h.w = nil
	}
	if h.base != nil {
		h.base.Close()
		h.base = nil
	}
	return 0
}
