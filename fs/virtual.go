package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// virtualFile is a read-only file whose content is generated: .stats and
// _index.json. Its size is that of freshly generated content every time it
// is asked for, and each open reads one snapshot, so `cat` always ends.
type virtualFile struct {
	gofs.Inode
	fs       *FS
	generate func() ([]byte, error)
}

var (
	_ gofs.NodeGetattrer     = (*virtualFile)(nil)
	_ gofs.NodeOpener        = (*virtualFile)(nil)
	_ gofs.NodeSetattrer     = (*virtualFile)(nil)
	_ gofs.NodeGetxattrer    = (*virtualFile)(nil)
	_ gofs.NodeSetxattrer    = (*virtualFile)(nil)
	_ gofs.NodeRemovexattrer = (*virtualFile)(nil)
)

func (v *virtualFile) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	size := 0
	if h, ok := f.(*snapshotHandle); ok {
		size = len(h.data)
	} else {
		data, err := v.generate()
		if err != nil {
			return v.fs.errno(err)
		}
		size = len(data)
	}
	now := time.Now()
	out.Mode = syscall.S_IFREG | 0o444
	out.Nlink = 1
	out.Size = uint64(size)
	out.Blocks = (out.Size + 511) / 512
	out.Uid, out.Gid = v.fs.opts.UID, v.fs.opts.GID
	out.SetTimes(&now, &now, &now)
	out.SetTimeout(noCache) // regenerated on every stat
	return 0
}

func (v *virtualFile) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	if flags&syscall.O_ACCMODE != syscall.O_RDONLY {
		return nil, 0, syscall.EPERM
	}
	data, err := v.generate()
	if err != nil {
		return nil, 0, v.fs.errno(err)
	}
	// DIRECT_IO: the snapshot, not a size the kernel cached, decides EOF.
	return &snapshotHandle{data: data}, fuse.FOPEN_DIRECT_IO, 0
}

func (v *virtualFile) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	return syscall.EPERM
}

func (v *virtualFile) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, syscall.ENODATA
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
