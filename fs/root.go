package fs

import (
	"context"
	"encoding/json"
	"syscall"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/store"
)

// statsName is the root's virtual statistics file.
const statsName = ".stats"

// Root is the mount's root directory: a directory per scope and .stats.
// Its children are fixed at mount time, so go-fuse serves lookups and
// listings from its own tree.
type Root struct {
	gofs.Inode
	fs    *FS
	stats *virtualFile // names .stats (see virtualFile.lookup)
}

var (
	_ gofs.NodeOnAdder    = (*Root)(nil)
	_ gofs.NodeLookuper   = (*Root)(nil)
	_ gofs.NodeReaddirer  = (*Root)(nil)
	_ gofs.NodeGetattrer  = (*Root)(nil)
	_ gofs.NodeStatfser   = (*Root)(nil)
	_ gofs.NodeMkdirer    = (*Root)(nil)
	_ gofs.NodeCreater    = (*Root)(nil)
	_ gofs.NodeUnlinker   = (*Root)(nil)
	_ gofs.NodeRmdirer    = (*Root)(nil)
	_ gofs.NodeRenamer    = (*Root)(nil)
	_ gofs.NodeSymlinker  = (*Root)(nil)
	_ gofs.NodeLinker     = (*Root)(nil)
	_ gofs.NodeMknoder    = (*Root)(nil)
	_ gofs.NodeSetxattrer = (*Root)(nil)
	_ gofs.NodeGetxattrer = (*Root)(nil)
)

// Getxattr: directories carry no attributes of their own.
func (r *Root) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	return 0, absentXattr(attr)
}

// Setxattr: directories carry no attributes of their own.
func (r *Root) Setxattr(ctx context.Context, attr string, data []byte, flags uint32) syscall.Errno {
	return syscall.ENOTSUP
}

// OnAdd builds the fixed tree.
func (r *Root) OnAdd(ctx context.Context) {
	r.fs.scopes = map[string]*gofs.Inode{}
	for _, name := range r.fs.store.Policy().Names() {
		d := &scopeDir{fs: r.fs, scope: name}
		ch := r.NewPersistentInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFDIR})
		r.AddChild(name, ch, false)
		r.fs.scopes[name] = ch
	}
	r.fs.unwatch = r.fs.store.Watch(r.fs.storeChanged)
	r.stats = &virtualFile{fs: r.fs, generate: r.statsJSON}
	r.AddChild(statsName, r.NewPersistentInode(ctx, r.stats, gofs.StableAttr{Mode: syscall.S_IFREG}), false)
}

func (r *Root) statsJSON() ([]byte, error) {
	var st any
	var err error
	if r.fs.opts.Stats != nil {
		st, err = r.fs.opts.Stats()
	} else {
		st, err = r.fs.store.Stats()
	}
	if err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(st, "", "  ")
	return append(b, '\n'), err
}

// Lookup answers for the fixed children (see FS.fixedEntry).
func (r *Root) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == statsName {
		return r.stats.lookup(ctx, r.EmbeddedInode(), name, out)
	}
	ch := r.GetChild(name)
	if ch == nil {
		if len(name) > store.MaxKeyLen {
			return nil, syscall.ENAMETOOLONG
		}
		return nil, syscall.ENOENT
	}
	if errno := r.fs.fixedEntry(ctx, ch, out); errno != 0 {
		return nil, errno
	}
	return ch, 0
}

// Readdir lists the fixed children, in the order go-fuse's own listing of
// them had: the scopes, then .stats. On a read-only mount .stats is a
// snapshot inode (virtualFile.lookup), which leaves the tree when the
// kernel forgets it; the listing shows the name all the same.
func (r *Root) Readdir(ctx context.Context) (gofs.DirStream, syscall.Errno) {
	names := r.fs.store.Policy().Names()
	list := make([]fuse.DirEntry, 0, len(names)+1)
	for _, name := range names {
		ch := r.fs.scopes[name]
		list = append(list, fuse.DirEntry{Name: name, Mode: ch.Mode(), Ino: ch.StableAttr().Ino})
	}
	stats := r.GetChild(statsName)
	if stats == nil {
		stats = r.stats.EmbeddedInode()
	}
	list = append(list, fuse.DirEntry{Name: statsName, Mode: stats.Mode(), Ino: stats.StableAttr().Ino})
	return gofs.NewListDirStream(list), 0
}

func (r *Root) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	r.fs.dirAttr(&out.Attr)
	out.SetTimeout(r.fs.opts.CacheTimeout)
	return 0
}

// Statfs reports the total quota of all scopes and their usage.
func (r *Root) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	st, err := r.fs.store.Stats()
	if err != nil {
		return r.fs.errno(err)
	}
	statfs(out, st.QuotaBytes, st.Bytes, st.Keys)
	return 0
}

// The root's shape is fixed: no names can be added, removed or renamed.

func (r *Root) Mkdir(ctx context.Context, name string, mode uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *Root) Create(ctx context.Context, name string, flags uint32, mode uint32, out *fuse.EntryOut) (*gofs.Inode, gofs.FileHandle, uint32, syscall.Errno) {
	return nil, nil, 0, syscall.EPERM
}

func (r *Root) Unlink(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (r *Root) Rmdir(ctx context.Context, name string) syscall.Errno { return syscall.EPERM }

func (r *Root) Rename(ctx context.Context, name string, newParent gofs.InodeEmbedder, newName string, flags uint32) syscall.Errno {
	return syscall.EPERM
}

func (r *Root) Symlink(ctx context.Context, target, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *Root) Link(ctx context.Context, target gofs.InodeEmbedder, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}

func (r *Root) Mknod(ctx context.Context, name string, mode uint32, dev uint32, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	return nil, syscall.EPERM
}
