package index

import (
	"bytes"
	"maps"
	"slices"
	"sort"

	bolt "go.etcd.io/bbolt"
)

// Bucket names as the overlay and the journal know them: the index's own
// buckets by name, a scope's bucket as "s/" + scope.
const (
	bkUsage  = "usage"
	bkRefs   = "refs"
	bkExpiry = "expiry"
	bkMeta   = "meta"
	bkScope  = "s/"
)

func scopeBucket(scope string) string { return bkScope + scope }

// boltBucket is the bbolt bucket an overlay bucket name stands for (nil if
// it does not exist).
func boltBucket(tx *bolt.Tx, name string) *bolt.Bucket {
	switch name {
	case bkUsage:
		return tx.Bucket(bucketUsage)
	case bkRefs:
		return tx.Bucket(bucketRefs)
	case bkExpiry:
		return tx.Bucket(bucketExpiry)
	case bkMeta:
		return tx.Bucket(bucketMeta)
	}
	if len(name) > len(bkScope) && name[:len(bkScope)] == bkScope {
		if sb := tx.Bucket(bucketScopes); sb != nil {
			return sb.Bucket([]byte(name[len(bkScope):]))
		}
	}
	return nil
}

// A change is the new value of one key of one bucket, or its removal.
type change struct {
	val []byte // nil with del
	del bool
}

// changes are a set of changes by bucket, then key.
type changes map[string]map[string]change

func (c changes) set(bucket string, key []byte, val []byte, del bool) {
	m := c[bucket]
	if m == nil {
		m = map[string]change{}
		c[bucket] = m
	}
	if del {
		m[string(key)] = change{del: true}
		return
	}
	m[string(key)] = change{val: bytes.Clone(val)}
}

func (c changes) count() int {
	n := 0
	for _, m := range c {
		n += len(m)
	}
	return n
}

// overlay holds the journaled changes that bbolt does not have yet (the
// checkpoint moves them there). It is never changed once published: a
// commit publishes a new one, so a reader keeps a consistent view for as
// long as it holds its pointer. It is two layers so that a commit copies
// only the small recent one: delta (newest) over base.
type overlay struct {
	base, delta changes
	n           int // changes in base and delta (an upper bound of distinct keys)
}

// deltaMax is how many changes the recent layer takes before it is folded
// into a new base: a commit copies at most this many, and base is copied
// once per deltaMax changes.
const deltaMax = 64

func (o *overlay) lookup(bucket string, key []byte) (change, bool) {
	if o == nil {
		return change{}, false
	}
	if c, ok := o.delta[bucket][string(key)]; ok {
		return c, true
	}
	c, ok := o.base[bucket][string(key)]
	return c, ok
}

// with returns the overlay that adds w on top of o.
func (o *overlay) with(w changes) *overlay {
	n := &overlay{base: changes{}, delta: changes{}}
	if o != nil {
		n.base, n.n = o.base, o.n
		for b, m := range o.delta {
			n.delta[b] = maps.Clone(m)
		}
	}
	for b, m := range w {
		d := n.delta[b]
		if d == nil {
			d = make(map[string]change, len(m))
			n.delta[b] = d
		}
		for k, c := range m {
			d[k] = c
			n.n++
		}
	}
	if n.delta.count() > deltaMax {
		base := changes{}
		for b, m := range n.base {
			base[b] = maps.Clone(m)
		}
		for b, m := range n.delta {
			bm := base[b]
			if bm == nil {
				bm = make(map[string]change, len(m))
				base[b] = bm
			}
			for k, c := range m {
				bm[k] = c
			}
		}
		n.base, n.delta = base, changes{}
	}
	return n
}

// merged is every change of o then w to bucket, the later one winning, in
// key order.
type keyed struct {
	key string
	change
}

func mergedChanges(o *overlay, w changes, bucket string) []keyed {
	var layers []map[string]change
	if o != nil {
		layers = append(layers, o.base[bucket], o.delta[bucket])
	}
	if w != nil {
		layers = append(layers, w[bucket])
	}
	all := map[string]change{}
	for _, l := range layers {
		for k, c := range l {
			all[k] = c
		}
	}
	if len(all) == 0 {
		return nil
	}
	out := make([]keyed, 0, len(all))
	for k, c := range all {
		out = append(out, keyed{k, c})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// final is every change of o, the later one winning, by bucket in a fixed
// order (what a checkpoint writes).
func (o *overlay) final() changes {
	out := changes{}
	if o == nil {
		return out
	}
	for _, l := range []changes{o.base, o.delta} {
		for b, m := range l {
			om := out[b]
			if om == nil {
				om = map[string]change{}
				out[b] = om
			}
			for k, c := range m {
				om[k] = c
			}
		}
	}
	return out
}

// apply writes c into bbolt (a checkpoint, a replay, a commit too large for
// the journal).
func apply(tx *bolt.Tx, c changes) error {
	names := make([]string, 0, len(c))
	for b := range c {
		names = append(names, b)
	}
	slices.Sort(names)
	for _, name := range names {
		b := boltBucket(tx, name)
		if b == nil {
			return errNoBucket(name)
		}
		m := c[name]
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			ch := m[k]
			var err error
			if ch.del {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), ch.val)
			}
			if err != nil {
				return err
			}
		}
	}
	return nil
}
