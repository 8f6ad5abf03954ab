package index

import (
	"fmt"
	"time"
)

// Attrs is what a filesystem shows of an entry as a file's attributes: the
// value's identity and size, its times and owner, without the content type,
// TTL and free metadata (which only extended attributes show). Times are
// packed as Unix nanoseconds (NoTime for the zero time): 80 bytes against
// Entry's 192. A mount keeps one per name the kernel knows, and a listing
// one per key.
type Attrs struct {
	Fingerprint                Fingerprint
	Size                       int64
	Created, Modified, Expires int64 // Unix nanoseconds; NoTime: none
	Mode, UID, GID             uint32
}

// NoTime packs the zero time, apart from every instant a record can hold
// (records use the same sentinel).
const NoTime = noTime

// PackTime returns t as Unix nanoseconds, or NoTime for the zero time.
func PackTime(t time.Time) int64 {
	if t.IsZero() {
		return NoTime
	}
	return t.UnixNano()
}

// UnpackTime is the inverse of PackTime.
func UnpackTime(ns int64) time.Time {
	if ns == NoTime {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

// Attrs returns e's attributes.
func (e *Entry) Attrs() Attrs {
	return Attrs{
		Fingerprint: e.Fingerprint, Size: e.Size,
		Created: PackTime(e.CreatedAt), Modified: PackTime(e.ModTime), Expires: PackTime(e.ExpiresAt),
		Mode: e.Mode, UID: e.UID, GID: e.GID,
	}
}

func (a *Attrs) CreatedAt() time.Time { return UnpackTime(a.Created) }
func (a *Attrs) ModTime() time.Time   { return UnpackTime(a.Modified) }
func (a *Attrs) ExpiresAt() time.Time { return UnpackTime(a.Expires) }

// ExpiredAt reports whether the entry is dead at now, as Entry.ExpiredAt.
func (a *Attrs) ExpiredAt(now time.Time) bool {
	return a.Expires != NoTime && now.UnixNano() >= a.Expires
}

// Entry returns the entry of scope/key with these attributes and no
// content type, TTL or metadata: enough to open the value it names.
func (a *Attrs) Entry(scope, key string) Entry {
	return Entry{
		Scope: scope, Key: key, Size: a.Size, Fingerprint: a.Fingerprint,
		CreatedAt: a.CreatedAt(), ModTime: a.ModTime(), ExpiresAt: a.ExpiresAt(),
		Mode: a.Mode, UID: a.UID, GID: a.GID,
	}
}

// DecodeAttrs parses the attributes of a record made by Encode. It checks
// the whole record as Decode does (the same records fail), but allocates
// nothing: the content type and metadata are skipped.
func (a *Attrs) DecodeAttrs(b []byte) error {
	d := decoder{b: b}
	if v := d.byte(); v != recordVersion {
		return fmt.Errorf("%w: version %d", ErrCorruptRecord, v)
	}
	d.skipString(MaxContentType)
	a.Size = d.varint()
	copy(a.Fingerprint[:], d.bytes(FingerprintSize))
	a.Created = d.packedTime()
	a.Modified = d.packedTime()
	a.Expires = d.packedTime()
	ttl := d.varint()
	a.Mode = d.uint32()
	a.UID = d.uint32()
	a.GID = d.uint32()
	_ = d.uint32() // flags
	n := d.uvarint()
	if n > MaxMetaEntries {
		d.fail("too many meta entries")
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		d.skipString(MaxMetaName)
		d.skipString(MaxMetaValue)
	}
	if d.err == nil && len(d.b) != 0 {
		d.fail("trailing bytes")
	}
	if d.err == nil && (a.Size < 0 || ttl < 0) {
		d.fail("negative size or ttl")
	}
	return d.err
}

func (d *decoder) skipString(max int) {
	n := d.uvarint()
	if n > uint64(max) {
		d.fail("string too long")
		return
	}
	d.bytes(int(n))
}

// packedTime is time() without the time.Time: what the record holds.
func (d *decoder) packedTime() int64 {
	ns := d.varint()
	if d.err != nil {
		return NoTime
	}
	return ns
}

// Listed is one key of a listing, with its attributes.
type Listed struct {
	Key string
	Attrs
}

// ForEachAttrs calls fn for every entry of scope in key order, expired or
// not, with its attributes only (see DecodeAttrs). key is only valid
// during the call.
func (t *Tx) ForEachAttrs(scope string, fn func(key []byte, a *Attrs) error) error {
	b, err := t.scope(scope)
	if err != nil {
		return err
	}
	var a Attrs
	n := 0
	return t.each(b, func(k, v []byte) error {
		if n++; n%releaseEvery == 0 {
			t.ReleasePages()
		}
		if err := a.DecodeAttrs(v); err != nil {
			return fmt.Errorf("%s/%s: %w", scope, k, err)
		}
		return fn(k, &a)
	})
}
