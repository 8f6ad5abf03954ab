package fs

import (
	"context"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/index"
)

// dirHandle is an open scope directory. It lists the scope once per pass
// (open or rewind) and answers READDIRPLUS from that listing: the entry the
// store already returned gives each name's attributes, so `ls -l` of a
// large scope costs one request per buffer of names instead of a LOOKUP
// (and an index read) per name.
type dirHandle struct {
	dir *scopeDir

	listed  bool
	gen     uint64         // dir.changes when entries were listed
	stale   bool           // the scope changed after the listing; relistLater called
	entries []index.Listed // the attributes of each key; no content type or metadata
	next    int            // position of the next name: 0 is _index.json, i+1 is entries[i]
	de      fuse.DirEntry  // the entry Readdirent returns (go-fuse copies it before the next call)
}

var (
	_ gofs.FileReaddirenter = (*dirHandle)(nil)
	_ gofs.FileSeekdirer    = (*dirHandle)(nil)
	_ gofs.FileLookuper     = (*dirHandle)(nil)
	_ gofs.FileReleasedirer = (*dirHandle)(nil)
)

// go-fuse serialises the calls on one handle (it holds the handle's lock
// through a READDIR/READDIRPLUS), so the handle needs no lock of its own.

func (h *dirHandle) list() syscall.Errno {
	gen := h.dir.changes.Load()
	entries, err := h.dir.fs.store.ListAttrs(h.dir.scope)
	if err != nil {
		return h.dir.fs.errno(err)
	}
	h.listed, h.gen, h.entries, h.stale = true, gen, entries, false
	h.dir.noteListing(gen, firstExpiryListed(entries))
	h.sizeIndexAhead()
	return 0
}

// sizeIndexAhead sizes the scope's _index.json in the background, on the
// other CPU, while this listing is being served: the stat of it that
// usually follows a listing (`ls -l`) then finds the size cached instead
// of taking a pass over the whole scope. A read-only mount generates its
// snapshots at lookup, not here.
func (h *dirHandle) sizeIndexAhead() {
	if !h.dir.fs.noOpen() {
		go h.dir.indexSize() //nolint:errcheck // the stat that needs it will see the error
	}
}

func (h *dirHandle) Readdirent(ctx context.Context) (*fuse.DirEntry, syscall.Errno) {
	if !h.listed {
		if errno := h.list(); errno != 0 {
			return nil, errno
		}
	}
	pos := h.next
	if pos > len(h.entries) {
		return nil, 0
	}
	if !h.stale && h.dir.changes.Load() != h.gen {
		h.stale = true
		h.dir.relistLater()
	}
	h.next++
	h.dir.fs.direntsServed.Add(1)
	name := indexName
	if pos > 0 {
		name = h.entries[pos-1].Key
	}
	// Off is where the next name starts, so a seek to it resumes there.
	// go-fuse copies the entry (into its reply, its record of the last
	// read, its overflow slot) before it asks for the next one, so one
	// entry per handle serves: no allocation per name.
	h.de = fuse.DirEntry{Name: name, Mode: syscall.S_IFREG, Off: uint64(pos + 1)}
	return &h.de, 0
}

// Seekdir to 0 is rewinddir: the next pass lists the scope again.
func (h *dirHandle) Seekdir(ctx context.Context, off uint64) syscall.Errno {
	if off == 0 {
		h.listed, h.entries = false, nil
	}
	h.next = int(off)
	return 0
}

// Lookup gives the attributes of the name Readdirent produced last. It uses
// the listed entry while the scope has not changed since the listing; after
// a change it asks the store, as a LOOKUP would, so READDIRPLUS never
// caches a name the change already invalidated.
func (h *dirHandle) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*gofs.Inode, syscall.Errno) {
	if name == indexName {
		// No attributes: the kernel may not keep those of _index.json
		// (they change with every key), so any stat of it asks again,
		// and sizing it here would only hold up the listing. Without a
		// node id the kernel takes the name alone.
		return nil, syscall.EAGAIN
	}
	pos := h.next - 1
	if pos < 1 || pos > len(h.entries) || h.entries[pos-1].Key != name ||
		h.dir.changes.Load() != h.gen {
		return h.dir.Lookup(ctx, name, out)
	}
	e := &h.entries[pos-1]
	if e.ExpiredAt(h.dir.fs.store.Now()) {
		return nil, syscall.ENOENT
	}
	return h.dir.entryInode(ctx, name, &e.Attrs, nil, out), 0
}

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {
	h.entries = nil
}

// firstExpiryListed is firstExpiry of a listing.
func firstExpiryListed(entries []index.Listed) time.Time {
	first := int64(index.NoTime)
	for i := range entries {
		if x := entries[i].Expires; x != index.NoTime && (first == index.NoTime || x < first) {
			first = x
		}
	}
	return index.UnpackTime(first)
}
