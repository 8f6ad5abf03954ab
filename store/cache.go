package store

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"

	"github.com/iriskvfs/iriskvfs/index"
)

// hotCache is an LRU of verified values keyed by fingerprint, bounded by
// total bytes. A value found here was hashed when it entered, and its key is
// its own hash, so a hit needs neither the disk nor another hash.
type hotCache struct {
	mu       sync.Mutex
	lru      *simplelru.LRU[index.Fingerprint, []byte]
	bytes    int64
	maxBytes int64
	maxItem  int64
}

func newHotCache(maxBytes, maxItem int64) *hotCache {
	c := &hotCache{maxBytes: maxBytes, maxItem: maxItem}
	c.lru, _ = simplelru.NewLRU[index.Fingerprint, []byte](1<<30, func(_ index.Fingerprint, v []byte) {
		c.bytes -= int64(len(v))
	})
	return c
}

func (c *hotCache) fits(size int64) bool { return size <= c.maxItem && size <= c.maxBytes }

func (c *hotCache) get(fp index.Fingerprint) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Get(fp)
}

func (c *hotCache) add(fp index.Fingerprint, v []byte) {
	if !c.fits(int64(len(v))) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.lru.Contains(fp) {
		return
	}
	c.lru.Add(fp, v)
	c.bytes += int64(len(v))
	for c.bytes > c.maxBytes {
		c.lru.RemoveOldest()
	}
}

func (c *hotCache) remove(fp index.Fingerprint) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.lru.Remove(fp)
}

// size reports the entries and bytes held.
func (c *hotCache) size() (int, int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len(), c.bytes
}

// fileIdentity is what must be unchanged for a blob verified once to count
// as verified again: any rewrite of the file changes its ctime or inode.
type fileIdentity struct {
	dev, ino    uint64
	size        int64
	mtime, ctim int64
}

// verifiedFiles remembers blobs that passed verification, so that opening a
// large value again costs an fstat instead of a full SHA-256 pass.
type verifiedFiles struct {
	mu  sync.Mutex
	lru *simplelru.LRU[index.Fingerprint, fileIdentity]
}

func newVerifiedFiles() *verifiedFiles {
	l, _ := simplelru.NewLRU[index.Fingerprint, fileIdentity](65536, nil)
	return &verifiedFiles{lru: l}
}

func (v *verifiedFiles) ok(fp index.Fingerprint, id fileIdentity) bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	got, found := v.lru.Get(fp)
	return found && got == id
}

func (v *verifiedFiles) remember(fp index.Fingerprint, id fileIdentity) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lru.Add(fp, id)
}

func (v *verifiedFiles) forget(fp index.Fingerprint) {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.lru.Remove(fp)
}

// hotTiers keeps the values of some scopes (the instruction sets) in a pool
// of their own, so that a burst of other reads cannot evict them: the
// contract's "instructions first".
type hotTiers struct {
	first       *hotCache // nil when no scope comes first
	rest        *hotCache
	firstScopes map[string]bool
}

func newHotTiers(opts Options) *hotTiers {
	t := &hotTiers{rest: newHotCache(opts.HotBytes, opts.HotEntryMax), firstScopes: map[string]bool{}}
	if len(opts.HotFirstScopes) > 0 {
		t.first = newHotCache(opts.HotFirstBytes, opts.HotEntryMax)
		for _, sc := range opts.HotFirstScopes {
			t.firstScopes[sc] = true
		}
	}
	return t
}

func (t *hotTiers) pool(scope string) *hotCache {
	if t.first != nil && t.firstScopes[scope] {
		return t.first
	}
	return t.rest
}

func (t *hotTiers) get(fp index.Fingerprint) ([]byte, bool) {
	if t.first != nil {
		if b, ok := t.first.get(fp); ok {
			return b, true
		}
	}
	return t.rest.get(fp)
}

func (t *hotTiers) fits(scope string, size int64) bool { return t.pool(scope).fits(size) }

func (t *hotTiers) add(scope string, fp index.Fingerprint, v []byte) { t.pool(scope).add(fp, v) }

func (t *hotTiers) remove(fp index.Fingerprint) {
	if t.first != nil {
		t.first.remove(fp)
	}
	t.rest.remove(fp)
}

func (t *hotTiers) size() (int, int64) {
	n, b := t.rest.size()
	if t.first != nil {
		n2, b2 := t.first.size()
		n, b = n+n2, b+b2
	}
	return n, b
}
