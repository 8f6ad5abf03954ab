package fs

import (
	"bytes"
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// virtualFile is a read-only file whose content is generated: .stats and
// _index.json. Its size is that of freshly generated content every time it
// is asked for, and each open reads one snapshot, so `cat` always ends.
//
// On a read-only mount files are not opened (noopen.go) and the kernel
// keeps the pages of every file across opens, so one inode cannot show
// changing content there. The node made at mount time then only names the
// file: each lookup generates the content and answers with an inode that
// shows exactly that snapshot (fixed), the same one while the content is
// unchanged, a new one when it changed. Those answers are not cached
// (entry timeout 0), so every open looks the name up again and reads what
// is current then, with its exact size; a descriptor opened before keeps
// reading its own snapshot.
type virtualFile struct {
	gofs.Inode
	fs       *FS
	generate func() ([]byte, error)

	// A snapshot inode (read-only mounts): its content, fixed, and when it
	// was generated.
	fixed bool
	snap  []byte
	made  time.Time

	// size, when set, gives the size of what generate would return
	// without generating it.
	size func() (int64, error)

	// generation, when set, says when generated content can have changed:
	// it returns a counter, and content generated at the same count and
	// before its until (see generateUntil) is the same. A lookup on a
	// read-only mount then reuses its snapshot inode without generating.
	generation    func() uint64
	generateUntil func() (data []byte, until time.Time, err error)
	snapGen       uint64
	snapUntil     time.Time
	// generated counts the snapshots generated for lookups (tests).
	generated atomic.Int64

	// The naming node's latest snapshot inode.
	mu      sync.Mutex
	current *virtualFile
}

var (
	_ gofs.NodeGetattrer     = (*virtualFile)(nil)
	_ gofs.NodeOpener        = (*virtualFile)(nil)
	_ gofs.NodeReader        = (*virtualFile)(nil)
	_ gofs.NodeFlusher       = (*virtualFile)(nil)
	_ gofs.NodeSetattrer     = (*virtualFile)(nil)
	_ gofs.NodeGetxattrer    = (*virtualFile)(nil)
	_ gofs.NodeSetxattrer    = (*virtualFile)(nil)
	_ gofs.NodeRemovexattrer = (*virtualFile)(nil)
)

func (v *virtualFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	var size int64
	now := time.Now()
	if v.fixed {
		// A snapshot never changes: its attributes may be cached.
		size, now = int64(len(v.snap)), v.made
		out.SetTimeout(v.fs.opts.CacheTimeout)
	} else {
		if h, ok := f.(*snapshotHandle); ok {
			size = int64(len(h.data))
		} else if v.size != nil {
			n, err := v.size()
			if err != nil {
				return v.fs.errno(err)
			}
			size = n
		} else {
			data, err := v.generate()
			if err != nil {
				return v.fs.errno(err)
			}
			size = int64(len(data))
		}
		out.SetTimeout(noCache) // regenerated on every stat
	}
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = (out.Size + 511) / 512
	out.Uid, out.Gid = v.fs.opts.UID, v.fs.opts.GID
	out.SetTimes(&now, &now, &now)
	return 0
}

func (v *virtualFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EPERM
	}
	if v.fs.noOpen() {
		return nil, 0, syscall.ENOSYS // read-only mount: see noopen.go
	}
	data, err := v.generate()
	if err != nil {
		return nil, 0, v.fs.errno(err)
	}
	// DIRECT_IO: the snapshot, not a size the kernel cached, decides EOF.
	return &snapshotHandle{data: data}, fuse.FOPEN_DIRECT_IO, 0
}

// Read serves an open snapshot (writable mounts), or, without a handle
// (read-only mounts), this inode's snapshot.
func (v *virtualFile) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if fr, ok := f.(gofs.FileReader); ok {
		return fr.Read(ctx, dest, off)
	}
	data := v.snap
	if !v.fixed {
		// Not reachable through the kernel on a read-only mount (lookups
		// answer with snapshots); generate rather than fail.
		var err error
		if data, err = v.generate(); err != nil {
			return nil, v.fs.errno(err)
		}
	}
	return (&snapshotHandle{data: data}).Read(ctx, dest, off)
}

func (v *virtualFile) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno {
	return noFlush(v.fs, f)
}

func (v *virtualFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (v *virtualFile) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, absentXattr(attr)
}

// lookup answers a lookup of the virtual file v names, in parent under
// name: v itself on a writable mount (see FS.fixedEntry), on a read-only
// one the inode of the current snapshot.
func (v *virtualFile) lookup(ctx context.Context, parent *gofs.Inode, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if !v.fs.noOpen() {
		if errno := v.fs.fixedEntry(ctx, v.EmbeddedInode(), out); errno != 0 {
			return nil, errno
		}
		return v.EmbeddedInode(), 0
	}
	if s := v.unchangedSnapshot(parent, name); s != nil {
		return v.snapshotEntry(ctx, s, out), 0
	}
	var gen uint64
	var until time.Time
	var data []byte
	var err error
	v.generated.Add(1)
	if v.generation != nil {
		gen = v.generation() // before generating: a change during it moves it on
		data, until, err = v.generateUntil()
	} else {
		data, err = v.generate()
	}
	if err != nil {
		return nil, v.fs.errno(err)
	}
	v.mu.Lock()
	s := v.current
	// Reuse the snapshot inode only while the kernel still has it under
	// this name: one it forgot must not be handed out again.
	if s == nil || parent.GetChild(name) != s.EmbeddedInode() || !bytes.Equal(s.snap, data) {
		s = &virtualFile{fs: v.fs, generate: v.generate, fixed: true, snap: data, made: time.Now()}
		parent.NewInode(ctx, s, gofs.StableAttr{Mode: syscall.S_IFREG})
		v.current = s
	}
	if v.generation != nil {
		s.snapGen, s.snapUntil = gen, until
	}
	v.mu.Unlock()
	return v.snapshotEntry(ctx, s, out), 0
}

// unchangedSnapshot returns the current snapshot inode if the kernel still
// has it under name and its content cannot have changed since (see
// generation), or nil.
func (v *virtualFile) unchangedSnapshot(parent *gofs.Inode, name string) *virtualFile {
	if v.generation == nil {
		return nil
	}
	gen, now := v.generation(), v.fs.store.Now()
	v.mu.Lock()
	defer v.mu.Unlock()
	s := v.current
	if s == nil || s.snapGen != gen || !s.snapUntil.IsZero() && !now.Before(s.snapUntil) || parent.GetChild(name) != s.EmbeddedInode() {
		return nil
	}
	return s
}

func (v *virtualFile) snapshotEntry(ctx context.Context, s *virtualFile, out *fuse.EntryOut) *gofs.Inode {
	var a fuse.AttrOut
	s.Getattr(ctx, nil, &a)
	out.Attr = a.Attr
	out.SetAttrTimeout(a.Timeout())
	out.SetEntryTimeout(noCache) // look it up again at every open
	return s.EmbeddedInode()
}

// Setxattr: a virtual file takes no changes, its attributes included.
func (v *virtualFile) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.EPERM
}

func (v *virtualFile) Removexattr(ctx context.Context, attr string) syscall.Errno {
	return syscall.EPERM
}

// snapshotHandle serves one generated snapshot.
type snapshotHandle struct{ data []byte }

var _ gofs.FileReader = (*snapshotHandle)(nil)

func (h *snapshotHandle) Read(ctx context.Context, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	if off >= int64(len(h.data)) {
		return fuse.ReadResultData(nil), 0
	}
	end := min(off+int64(len(dest)), int64(len(h.data)))
	return fuse.ReadResultData(h.data[off:end]), 0
}
