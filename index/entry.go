// Package index is the durable metadata index of a store: one bbolt bucket
// per scope holding an entry record per key, and, kept in the same
// transactions, the derived state the hot paths need without rescanning:
// per-scope usage, per-blob reference counts and an expiry index.
package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"
)

// FingerprintSize is the size of a SHA-256 digest.
const FingerprintSize = 32

// Fingerprint is the SHA-256 of a value; it also names the value's blob file.
type Fingerprint [FingerprintSize]byte

// Entry is the metadata of one key. Scope and Key are the record's address
// and are not part of its encoding.
type Entry struct {
	Scope       string
	Key         string
	ContentType string
	Size        int64
	Fingerprint Fingerprint
	CreatedAt   time.Time // when this value was published
	ModTime     time.Time // mtime as the filesystem shows it (touch may change it)
	ExpiresAt   time.Time // zero: never expires
	TTL         time.Duration
	Mode        uint32 // permission bits as the filesystem shows them
	UID, GID    uint32
	Flags       uint32 // FlagContentTypeSet, …
	Meta        map[string]string
}

// Entry flags.
const (
	// FlagContentTypeSet marks a content type someone gave (put, API,
	// setfattr), as opposed to one guessed from the key or the bytes; only
	// a given one is kept when the value is rewritten through the mount.
	FlagContentTypeSet uint32 = 1 << iota
	// FlagTTLSet marks a per-key TTL (put --ttl, setfattr user.iris.ttl);
	// without it the key follows its scope's TTL.
	FlagTTLSet
)

// ExpiredAt reports whether the entry is dead at now. An entry dies at the
// instant of its expiry, not a moment later.
func (e *Entry) ExpiredAt(now time.Time) bool {
	return !e.ExpiresAt.IsZero() && !now.Before(e.ExpiresAt)
}

// Limits on what a record may hold; decoding rejects anything larger, so a
// damaged record cannot make the reader allocate without bound.
const (
	MaxContentType = 255
	MaxMetaEntries = 256
	MaxMetaName    = 255
	MaxMetaValue   = 64 << 10
)

// recordVersion is the first byte of every encoded entry.
const recordVersion = 1

// ErrCorruptRecord reports an entry record that cannot be decoded.
var ErrCorruptRecord = errors.New("corrupt index record")

// Encode returns the binary record of e: a version byte, then the fields in
// a fixed order (varints for numbers, length-prefixed strings, meta sorted by
// name so equal entries encode to equal bytes).
func (e *Entry) Encode() []byte {
	n := 1 + 3*binary.MaxVarintLen64 + len(e.ContentType) + FingerprintSize + 4*binary.MaxVarintLen64 + 5*binary.MaxVarintLen32 + binary.MaxVarintLen64
	for k, v := range e.Meta {
		n += len(k) + len(v) + 2*binary.MaxVarintLen64
	}
	b := make([]byte, 0, n)
	b = append(b, recordVersion)
	b = appendString(b, e.ContentType)
	b = binary.AppendVarint(b, e.Size)
	b = append(b, e.Fingerprint[:]...)
	b = appendTime(b, e.CreatedAt)
	b = appendTime(b, e.ModTime)
	b = appendTime(b, e.ExpiresAt)
	b = binary.AppendVarint(b, int64(e.TTL))
	b = binary.AppendUvarint(b, uint64(e.Mode))
	b = binary.AppendUvarint(b, uint64(e.UID))
	b = binary.AppendUvarint(b, uint64(e.GID))
	b = binary.AppendUvarint(b, uint64(e.Flags))
	names := make([]string, 0, len(e.Meta))
	for k := range e.Meta {
		names = append(names, k)
	}
	sort.Strings(names)
	b = binary.AppendUvarint(b, uint64(len(names)))
	for _, k := range names {
		b = appendString(b, k)
		b = appendString(b, e.Meta[k])
	}
	return b
}

// Decode parses a record made by Encode into e, keeping e.Scope and e.Key.
func (e *Entry) Decode(b []byte) error {
	d := decoder{b: b}
	if v := d.byte(); v != recordVersion {
		return fmt.Errorf("%w: version %d", ErrCorruptRecord, v)
	}
	e.ContentType = d.string(MaxContentType)
	e.Size = d.varint()
	copy(e.Fingerprint[:], d.bytes(FingerprintSize))
	e.CreatedAt = d.time()
	e.ModTime = d.time()
	e.ExpiresAt = d.time()
	e.TTL = time.Duration(d.varint())
	e.Mode = d.uint32()
	e.UID = d.uint32()
	e.GID = d.uint32()
	e.Flags = d.uint32()
	n := d.uvarint()
	if n > MaxMetaEntries {
		d.fail("too many meta entries")
	}
	e.Meta = nil
	if n > 0 && d.err == nil {
		e.Meta = make(map[string]string, n)
		for i := uint64(0); i < n && d.err == nil; i++ {
			k := d.string(MaxMetaName)
			e.Meta[k] = d.string(MaxMetaValue)
		}
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err == nil && (e.Size < 0 || e.TTL < 0) {
		d.fail("negative size or ttl")
	}
	return d.err
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// noTime encodes the zero time ("never"), apart from every real instant,
// the epoch included.
const noTime = math.MinInt64

// MinTime and MaxTime bound the instants a record can hold (int64
// nanoseconds since 1970); ClampTime brings others inside.
var (
	MinTime = time.Unix(0, math.MinInt64+1).UTC()
	MaxTime = time.Unix(0, math.MaxInt64).UTC()
)

// ClampTime returns t limited to [MinTime, MaxTime]; the zero time stays zero.
func ClampTime(t time.Time) time.Time {
	switch {
	case t.IsZero():
		return t
	case t.Before(MinTime):
		return MinTime
	case t.After(MaxTime):
		return MaxTime
	}
	return t
}

// appendTime stores nanoseconds since the epoch, or noTime for the zero time.
func appendTime(b []byte, t time.Time) []byte {
	if t.IsZero() {
		return binary.AppendVarint(b, noTime)
	}
	return binary.AppendVarint(b, ClampTime(t).UnixNano())
}

type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail(why string) {
	if d.err == nil {
		d.err = fmt.Errorf("%w: %s", ErrCorruptRecord, why)
	}
	d.b = nil
}

func (d *decoder) byte() byte {
	if len(d.b) < 1 {
		d.fail("short record")
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) bytes(n int) []byte {
	if len(d.b) < n {
		d.fail("short record")
		return nil
	}
	s := d.b[:n]
	d.b = d.b[n:]
	return s
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 {
		d.fail("bad varint")
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) uint32() uint32 {
	v := d.uvarint()
	if v > math.MaxUint32 {
		d.fail("value out of range")
		return 0
	}
	return uint32(v)
}

func (d *decoder) string(max int) string {
	n := d.uvarint()
	if n > uint64(max) {
		d.fail("string too long")
		return ""
	}
	return string(d.bytes(int(n)))
}

func (d *decoder) time() time.Time {
	ns := d.varint()
	if ns == noTime || d.err != nil {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}
