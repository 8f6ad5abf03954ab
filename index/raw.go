package index

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"io"
	"sort"
)

// A reader of the bbolt file format that trusts nothing it reads. bbolt
// trusts its pages: on a damaged file it panics (which guard recovers) or,
// where a page points back at one above it, loops for ever. This reader
// checks every page against the file and the tree's high-water mark, reads
// each page at most once per walk (a loop is reported, not followed) and
// every element against its page, and never panics. Salvage and Verify walk
// with it. Layout (bbolt v1.4, format version 2, little endian):
//
//	page:    id u64, flags u16, count u16, overflow u32, then the elements
//	meta:    after the page header: magic u32, version u32, pageSize u32,
//	         flags u32, root {pgid u64, sequence u64}, freelist u64,
//	         pgid u64, txid u64, checksum u64 (FNV-1a of what precedes it)
//	branch:  count × {pos u32, ksize u32, pgid u64}
//	leaf:    count × {flags u32, pos u32, ksize u32, vsize u32}; key and
//	         value at pos from the element; flags 1 marks a nested bucket,
//	         whose value is {root u64, sequence u64} and, when root is 0,
//	         the bucket's own leaf page inline
const (
	rawMagic        = 0xED0CDAED
	rawVersion      = 2
	rawHeader       = 16
	rawElement      = 16
	rawBranch       = 0x01
	rawLeaf         = 0x02
	rawBucketFlag   = 0x01
	rawBucketHeader = 16
	rawMaxDepth     = 64
	rawMetaChecksum = 72 // offset of the checksum in a meta page
)

type rawMeta struct {
	pageSize int64
	root     uint64
	pgid     uint64 // the tree's pages are [0, pgid)
	txid     uint64
}

// readMetas returns the valid meta pages of the file, newest first.
func readMetas(r io.ReaderAt, size int64) []rawMeta {
	var out []rawMeta
	try := func(off int64) (rawMeta, bool) {
		b := make([]byte, rawMetaChecksum+8)
		if off+int64(len(b)) > size {
			return rawMeta{}, false
		}
		if _, err := r.ReadAt(b, off); err != nil {
			return rawMeta{}, false
		}
		le := binary.LittleEndian
		h := fnv.New64a()
		h.Write(b[rawHeader:rawMetaChecksum])
		if le.Uint32(b[16:]) != rawMagic || le.Uint32(b[20:]) != rawVersion || h.Sum64() != le.Uint64(b[rawMetaChecksum:]) {
			return rawMeta{}, false
		}
		m := rawMeta{pageSize: int64(le.Uint32(b[24:])), root: le.Uint64(b[32:]), pgid: le.Uint64(b[56:]), txid: le.Uint64(b[64:])}
		if m.pageSize < 512 || m.pageSize > 1<<20 || m.pageSize&(m.pageSize-1) != 0 {
			return rawMeta{}, false
		}
		return m, true
	}
	m0, ok0 := try(0)
	if ok0 {
		out = append(out, m0)
	}
	// The second meta page is one page in: of the first's size, or of the
	// usual sizes when the first is unreadable.
	sizes := []int64{4096, 8192, 16384, 65536}
	if ok0 {
		sizes = []int64{m0.pageSize}
	}
	for _, ps := range sizes {
		if m1, ok := try(ps); ok && m1.pageSize == ps {
			out = append(out, m1)
			break
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].txid > out[j].txid })
	return out
}

// rawTree walks one tree (the one a meta page roots), collecting what it
// cannot read in problems.
type rawTree struct {
	stop     func() bool // when it says so, the walk ends early (nil: never)
	r        io.ReaderAt
	size     int64
	m        rawMeta
	visited  map[uint64]bool
	problems []string
}

func newRawTree(r io.ReaderAt, size int64, m rawMeta) *rawTree {
	return &rawTree{r: r, size: size, m: m, visited: map[uint64]bool{}}
}

func (t *rawTree) problem(format string, args ...any) {
	t.problems = append(t.problems, fmt.Sprintf(format, args...))
}

// page reads page id, with its overflow pages.
func (t *rawTree) page(id uint64) ([]byte, error) {
	if id < 2 || id >= t.m.pgid {
		return nil, fmt.Errorf("page %d is outside the tree's pages [2, %d)", id, t.m.pgid)
	}
	if t.visited[id] {
		return nil, fmt.Errorf("page %d is reached twice (a loop)", id)
	}
	t.visited[id] = true
	ps := t.m.pageSize
	off := int64(id) * ps
	if off+ps > t.size {
		return nil, fmt.Errorf("page %d is past the end of the file (%d bytes): truncated", id, t.size)
	}
	b := make([]byte, ps)
	if _, err := t.r.ReadAt(b, off); err != nil {
		return nil, fmt.Errorf("page %d: %v", id, err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(b); got != id {
		return nil, fmt.Errorf("page %d says it is page %d", id, got)
	}
	if over := uint64(le.Uint32(b[12:])); over > 0 {
		if over >= t.m.pgid-id || off+int64(over+1)*ps > t.size {
			return nil, fmt.Errorf("page %d runs %d pages on, past the file", id, over)
		}
		b = make([]byte, int64(over+1)*ps)
		if _, err := t.r.ReadAt(b, off); err != nil {
			return nil, fmt.Errorf("page %d: %v", id, err)
		}
		for i := uint64(1); i <= over; i++ {
			t.visited[id+i] = true
		}
	}
	return b, nil
}

// bucket calls fn for every element of the bucket whose header is value
// (a nested bucket's value; for the root bucket, the meta's root), in key
// order.
func (t *rawTree) bucket(value []byte, where string, fn func(key, value []byte, nested bool)) {
	if len(value) < rawBucketHeader {
		t.problem("%s: bucket header cut short", where)
		return
	}
	if root := binary.LittleEndian.Uint64(value); root != 0 {
		t.node(root, where, 0, fn)
		return
	}
	t.elements(value[rawBucketHeader:], where+" (inline)", 0, fn)
}

func (t *rawTree) node(id uint64, where string, depth int, fn func(key, value []byte, nested bool)) {
	if t.stop != nil && t.stop() {
		return
	}
	if depth > rawMaxDepth {
		t.problem("%s: deeper than %d levels", where, rawMaxDepth)
		return
	}
	p, err := t.page(id)
	if err != nil {
		t.problem("%s: %v", where, err)
		return
	}
	t.elements(p, where, depth, fn)
}

// elements reads the elements of page p: a leaf's go to fn, a branch's
// children are walked.
func (t *rawTree) elements(p []byte, where string, depth int, fn func(key, value []byte, nested bool)) {
	if len(p) < rawHeader {
		t.problem("%s: page cut short", where)
		return
	}
	le := binary.LittleEndian
	id, flags, count := le.Uint64(p), le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	if flags != rawBranch && flags != rawLeaf {
		t.problem("%s: page %d is neither a branch nor a leaf (flags %#x)", where, id, flags)
		return
	}
	if rawHeader+count*rawElement > len(p) {
		t.problem("%s: page %d holds %d elements, more than fit", where, id, count)
		return
	}
	for i := 0; i < count; i++ {
		e := rawHeader + i*rawElement
		if flags == rawBranch {
			t.node(le.Uint64(p[e+8:]), where, depth+1, fn)
			continue
		}
		pos, ks, vs := uint64(le.Uint32(p[e+4:])), uint64(le.Uint32(p[e+8:])), uint64(le.Uint32(p[e+12:]))
		k := uint64(e) + pos
		if k+ks+vs > uint64(len(p)) {
			t.problem("%s: page %d element %d points past its page", where, id, i)
			continue
		}
		fn(p[k:k+ks], p[k+ks:k+ks+vs], le.Uint32(p[e:])&rawBucketFlag != 0)
	}
}

// walk reads the whole index tree: the entry records and the keys of the
// expiry index go to the callbacks (either may be nil); the other buckets
// are read for their structure only.
func (t *rawTree) walk(record func(scope, key string, rec []byte), expiry func(k []byte)) {
	var root [rawBucketHeader]byte
	binary.LittleEndian.PutUint64(root[:], t.m.root)
	t.bucket(root[:], "the root bucket", func(name, v []byte, nested bool) {
		if !nested {
			return
		}
		switch top := string(name); top {
		case string(bucketScopes):
			t.bucket(v, "the scopes bucket", func(scope, v []byte, nested bool) {
				if !nested {
					return
				}
				sc := string(scope)
				t.bucket(v, "scope "+sc, func(k, rec []byte, nested bool) {
					if !nested && record != nil {
						record(sc, string(k), rec)
					}
				})
			})
		case string(bucketExpiry):
			t.bucket(v, "the expiry index", func(k, _ []byte, nested bool) {
				if !nested && expiry != nil {
					expiry(k)
				}
			})
		default:
			t.bucket(v, "bucket "+top, func([]byte, []byte, bool) {})
		}
	})
}
