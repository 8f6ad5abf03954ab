package fs

import (
	"context"
	"runtime"
	"sync/atomic"
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

	// Inodes made ahead of the kernel's requests (see prepare): cur holds
	// the names being answered, ahead the ones after them.
	cur, ahead *prepBatch
	own        uint64 // inodes of prepared batches this handle gave out
}

// prepBatch is a run of listed names whose inodes a goroutine makes while
// the kernel digests the previous answer. A READDIRPLUS answer of ~200
// names keeps the kernel busy creating as many dentries and inodes, and
// the daemon idle, before it asks for the next: making the next names'
// inodes then, on the other CPU, takes that work out of the next request.
// The inodes are only allocated (go-fuse's NewInode): go-fuse registers
// them, and counts the kernel's reference, only for the names it sends,
// so one never sent is garbage like any other.
type prepBatch struct {
	start, end int    // entries[start:end]
	base       uint64 // dir.handouts - own before the goroutine checked names free
	items      []prepItem
}

// prepItem is one name of a batch. The goroutine and the request share
// the work: the request never waits for a goroutine that has not been
// scheduled yet (Go runs it on the request's own processor unless another
// one takes it), it makes the names the goroutine has not reached itself.
type prepItem struct {
	state atomic.Uint32 // itemFree, then itemMaking and itemMade, or itemTaken
	kf    *keyFile      // set before itemMade; nil: the name had an inode
}

const (
	itemFree   = iota
	itemMaking // by the goroutine
	itemMade   // by the goroutine
	itemTaken  // by the request
)

// prepBatchSize is a little more than one READDIRPLUS answer of short
// names (32 KiB, the buffer ls gives getdents, holds ~200).
const prepBatchSize = 256

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
	h.cur, h.ahead = h.prepare(0), nil
	return 0
}

// prepare starts making the inodes of entries[start:] (one batch), for
// names that have none, and returns the batch, or nil past the end.
func (h *dirHandle) prepare(start int) *prepBatch {
	end := min(start+prepBatchSize, len(h.entries))
	if start < 0 || start >= end {
		return nil
	}
	d := h.dir
	b := &prepBatch{start: start, end: end, base: d.handouts.Load() - h.own, items: make([]prepItem, end-start)}
	entries := h.entries[start:end]
	if !prepInline.Load() {
		go func() {
			for i := range b.items {
				it := &b.items[i]
				if it.state.CompareAndSwap(itemFree, itemMaking) {
					it.kf = d.freeKeyInode(&entries[i])
					it.state.Store(itemMade)
				}
			}
		}()
	}
	return b
}

// prepInline is set by tests that make the request take every name
// itself, as it does where the goroutine has not got to it yet.
var prepInline atomic.Bool

// freeKeyInode makes a new inode for e's key if the name has none in the
// tree; with one, versionInode decides whether it still serves.
func (d *scopeDir) freeKeyInode(e *index.Listed) *keyFile {
	if d.GetChild(e.Key) != nil {
		return nil
	}
	kf := &keyFile{dir: d, key: e.Key, shown: e.Attrs}
	d.NewInode(context.Background(), kf, d.fs.keyFileAttr())
	return kf
}

// prepared returns a new inode for entries[i] if the name has none: the
// one made ahead, if the name is still free (no inode was given out for
// any name of the scope since it was checked, but by this handle from its
// batches), or, where the goroutine has not got to it, one made now. It
// keeps the batch after i's in preparation.
func (h *dirHandle) prepared(i int) *keyFile {
	b := h.cur
	if b == nil || i < b.start || i >= b.end {
		if b = h.ahead; b == nil || i < b.start || i >= b.end {
			// A seek, or the first name: pipeline from here on.
			h.cur, h.ahead = nil, h.prepare(i+1)
			return nil
		}
		h.cur, h.ahead = b, nil
	}
	if h.ahead == nil {
		h.ahead = h.prepare(b.end)
	}
	it := &b.items[i-b.start]
	for {
		switch it.state.Load() {
		case itemFree:
			if it.state.CompareAndSwap(itemFree, itemTaken) {
				return h.dir.freeKeyInode(&h.entries[i])
			}
		case itemMaking:
			runtime.Gosched() // one name: about a microsecond
		case itemMade:
			it.state.Store(itemTaken) // an inode is given out once
			kf := it.kf
			it.kf = nil
			if kf == nil || h.dir.handouts.Load()-h.own != b.base {
				return nil
			}
			return kf
		default:
			return nil
		}
	}
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
		h.cur, h.ahead = nil, nil
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
	if kf := h.prepared(pos - 1); kf != nil {
		if _, retrying, _ := h.dir.retryKind(ctx, name); !retrying {
			h.dir.handouts.Add(1)
			h.own++
			kf.fillEntry(out, &e.Attrs)
			return kf.EmbeddedInode(), 0
		}
	}
	return h.dir.entryInode(ctx, name, &e.Attrs, nil, out), 0
}

func (h *dirHandle) Releasedir(ctx context.Context, releaseFlags uint32) {
	h.entries = nil
	h.cur, h.ahead = nil, nil
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
