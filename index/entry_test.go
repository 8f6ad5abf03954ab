package index_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"maps"
	"math"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// entriesEqual compares two entries field by field, times by instant.
func entriesEqual(a, b *index.Entry) bool {
	return a.Scope == b.Scope && a.Key == b.Key &&
		a.ContentType == b.ContentType && a.Size == b.Size &&
		a.Fingerprint == b.Fingerprint &&
		a.CreatedAt.Equal(b.CreatedAt) && a.CreatedAt.IsZero() == b.CreatedAt.IsZero() &&
		a.ModTime.Equal(b.ModTime) && a.ModTime.IsZero() == b.ModTime.IsZero() &&
		a.ExpiresAt.Equal(b.ExpiresAt) && a.ExpiresAt.IsZero() == b.ExpiresAt.IsZero() &&
		a.TTL == b.TTL && a.Mode == b.Mode && a.UID == b.UID && a.GID == b.GID &&
		len(a.Meta) == len(b.Meta) && maps.Equal(a.Meta, b.Meta)
}

func fullEntry() index.Entry {
	var fp index.Fingerprint
	for i := range fp {
		fp[i] = byte(i*7 + 3)
	}
	created := time.Date(2025, 3, 14, 15, 9, 26, 535897932, time.UTC)
	return index.Entry{
		Scope:       "task",
		Key:         "notes.md",
		ContentType: "text/markdown; charset=utf-8",
		Size:        123456789,
		Fingerprint: fp,
		CreatedAt:   created,
		ModTime:     created.Add(-time.Hour),
		ExpiresAt:   created.Add(24 * time.Hour),
		TTL:         24 * time.Hour,
		Mode:        0o640,
		UID:         1000,
		GID:         4294967295,
		Meta:        map[string]string{"author": "agent", "b": "", "z.last": strings.Repeat("v", 300)},
	}
}

func TestEntryRoundTripAllFields(t *testing.T) {
	in := fullEntry()
	rec := in.Encode()
	out := index.Entry{Scope: "task", Key: "notes.md"}
	if err := out.Decode(rec); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if !entriesEqual(&in, &out) {
		t.Fatalf("round trip changed the entry:\n in %+v\nout %+v", in, out)
	}
	if out.CreatedAt.Nanosecond() != 535897932 {
		t.Errorf("nanoseconds lost: %v", out.CreatedAt)
	}
	if out.CreatedAt.Location() != time.UTC {
		t.Errorf("decoded time is not UTC: %v", out.CreatedAt.Location())
	}
}

func TestEntryRoundTripZeroTimesMeanNever(t *testing.T) {
	in := index.Entry{Size: 0, ContentType: ""}
	out := index.Entry{Meta: map[string]string{"stale": "x"}, ExpiresAt: time.Now()}
	if err := out.Decode(in.Encode()); err != nil {
		t.Fatalf("Decode: %v", err)
	}
	if !out.CreatedAt.IsZero() || !out.ModTime.IsZero() || !out.ExpiresAt.IsZero() {
		t.Fatalf("zero times did not survive: %+v", out)
	}
	if out.Meta != nil {
		t.Fatalf("Decode kept stale meta: %v", out.Meta)
	}
	if out.ExpiredAt(time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)) {
		t.Fatal("an entry without expiry reports itself expired")
	}
}

func TestEntryDecodeKeepsAddress(t *testing.T) {
	in := fullEntry()
	out := index.Entry{Scope: "project", Key: "other"}
	if err := out.Decode(in.Encode()); err != nil {
		t.Fatal(err)
	}
	if out.Scope != "project" || out.Key != "other" {
		t.Fatalf("Decode changed the address: %s/%s", out.Scope, out.Key)
	}
}

func TestEntryEncodeDeterministic(t *testing.T) {
	// Build the same meta map in different insertion orders, many times, so
	// that map iteration order varies.
	names := []string{"k1", "a", "zz", "m-m", "b.c", "0", "Q"}
	var first []byte
	for i := 0; i < 50; i++ {
		meta := map[string]string{}
		for j := range names {
			n := names[(i+j)%len(names)]
			meta[n] = "value-of-" + n
		}
		e := fullEntry()
		e.Meta = meta
		rec := e.Encode()
		if first == nil {
			first = rec
			continue
		}
		if !bytes.Equal(first, rec) {
			t.Fatalf("encoding %d differs from the first", i)
		}
	}
	// Scope and Key are not part of the record.
	a, b := fullEntry(), fullEntry()
	b.Scope, b.Key = "system", "elsewhere"
	if !bytes.Equal(a.Encode(), b.Encode()) {
		t.Fatal("scope/key leaked into the record")
	}
	// A changed field changes the record.
	b = fullEntry()
	b.Meta["author"] = "someone else"
	if bytes.Equal(a.Encode(), b.Encode()) {
		t.Fatal("different meta encoded to the same bytes")
	}
}

func TestEntryExpiredAt(t *testing.T) {
	at := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)
	e := index.Entry{ExpiresAt: at}
	if e.ExpiredAt(at.Add(-time.Nanosecond)) {
		t.Error("expired one nanosecond early")
	}
	if !e.ExpiredAt(at) {
		t.Error("not expired at the instant of expiry")
	}
	if !e.ExpiredAt(at.Add(time.Hour)) {
		t.Error("not expired after expiry")
	}
}

// recordBuilder writes records by hand, to make malformed ones.
type recordBuilder struct{ b []byte }

func (r *recordBuilder) byte(c byte) *recordBuilder { r.b = append(r.b, c); return r }
func (r *recordBuilder) uvarint(v uint64) *recordBuilder {
	r.b = binary.AppendUvarint(r.b, v)
	return r
}
func (r *recordBuilder) varint(v int64) *recordBuilder { r.b = binary.AppendVarint(r.b, v); return r }
func (r *recordBuilder) str(s string) *recordBuilder {
	r.uvarint(uint64(len(s)))
	r.b = append(r.b, s...)
	return r
}
func (r *recordBuilder) raw(p []byte) *recordBuilder { r.b = append(r.b, p...); return r }

// validHead is a record up to (not including) the meta count.
func validHead(size int64, ttl int64) *recordBuilder {
	return headWithOwner(size, ttl, 1, 2)
}

func headWithOwner(size, ttl int64, uid, gid uint64) *recordBuilder {
	r := &recordBuilder{}
	r.byte(1).str("text/plain").varint(size).raw(make([]byte, index.FingerprintSize))
	r.varint(1).varint(2).varint(math.MinInt64).varint(ttl) // MinInt64: never expires
	r.uvarint(0o644).uvarint(uid).uvarint(gid).uvarint(0)   // flags
	return r
}

func TestEntryDecodeHandBuiltRecord(t *testing.T) {
	rec := validHead(42, int64(time.Hour)).uvarint(2).str("a").str("1").str("b").str("2").b
	var e index.Entry
	if err := e.Decode(rec); err != nil {
		t.Fatalf("valid hand-built record rejected: %v", err)
	}
	if e.Size != 42 || e.TTL != time.Hour || e.Mode != 0o644 || e.UID != 1 || e.GID != 2 ||
		e.ContentType != "text/plain" || e.Meta["a"] != "1" || e.Meta["b"] != "2" ||
		e.CreatedAt.UnixNano() != 1 || e.ModTime.UnixNano() != 2 || !e.ExpiresAt.IsZero() {
		t.Fatalf("decoded wrong fields: %+v", e)
	}
}

func TestEntryDecodeRejects(t *testing.T) {
	full := fullEntry()
	good := full.Encode()
	wrongVersion := append([]byte{2}, good[1:]...)
	type badCase struct {
		rec  []byte
		want string // in the error message
	}
	cases := map[string]badCase{
		"empty":              {[]byte{}, "version 0"},
		"version 0":          {append([]byte{0}, good[1:]...), "version 0"},
		"version 2":          {wrongVersion, "version 2"},
		"version only":       {[]byte{1}, "bad varint"},
		"trailing byte":      {append(append([]byte{}, good...), 0), "trailing bytes"},
		"trailing garbage":   {append(append([]byte{}, good...), "xyz"...), "trailing bytes"},
		"negative size":      {validHead(-1, 0).uvarint(0).b, "negative"},
		"negative ttl":       {validHead(1, -5).uvarint(0).b, "negative"},
		"content type 256":   {(&recordBuilder{}).byte(1).str(strings.Repeat("x", 256)).b, "string too long"},
		"huge string length": {(&recordBuilder{}).byte(1).uvarint(1 << 62).b, "string too long"},
		"string past end":    {(&recordBuilder{}).byte(1).uvarint(10).raw([]byte("abc")).b, "short record"},
		"too many meta":      {validHead(1, 0).uvarint(index.MaxMetaEntries + 1).b, "too many meta"},
		"meta count 2^63":    {validHead(1, 0).uvarint(1 << 63).b, "too many meta"},
		"meta missing":       {validHead(1, 0).uvarint(2).str("a").str("1").b, "bad varint"},
		"meta name 256":      {validHead(1, 0).uvarint(1).str(strings.Repeat("n", 256)).str("v").b, "string too long"},
		"meta value 64K+1":   {validHead(1, 0).uvarint(1).str("n").str(strings.Repeat("v", index.MaxMetaValue+1)).b, "string too long"},
		"uid > 32 bits":      {headWithOwner(1, 0, 1<<32, 0).uvarint(0).b, "out of range"},
		"gid > 32 bits":      {headWithOwner(1, 0, 0, 1<<40).uvarint(0).b, "out of range"},
		"bad varint":         {(&recordBuilder{}).byte(1).raw(bytes.Repeat([]byte{0xff}, 11)).b, "bad varint"},
		"no meta count":      {validHead(1, 0).b, "bad varint"},
		"short fingerprint":  {(&recordBuilder{}).byte(1).str("").varint(1).raw(make([]byte, 31)).b, ""},
	}
	for n := 1; n < len(good); n++ {
		cases["truncated to "+strconv.Itoa(n)] = badCase{good[:n], ""}
	}
	for name, c := range cases {
		var e index.Entry
		err := e.Decode(c.rec)
		if err == nil {
			t.Errorf("%s: Decode accepted a bad record", name)
			continue
		}
		if !errors.Is(err, index.ErrCorruptRecord) {
			t.Errorf("%s: error %v is not ErrCorruptRecord", name, err)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not say %q", name, err, c.want)
		}
	}
	// The limits themselves are accepted.
	rec := validHead(1, 0).uvarint(1).str(strings.Repeat("n", index.MaxMetaName)).str(strings.Repeat("v", index.MaxMetaValue)).b
	var e index.Entry
	if err := e.Decode(rec); err != nil {
		t.Fatalf("record at the limits rejected: %v", err)
	}
}

func TestEntryEpochAndFlagsSurvive(t *testing.T) {
	in := index.Entry{ModTime: time.Unix(0, 0), CreatedAt: time.Unix(-5, 0), Flags: index.FlagContentTypeSet}
	var out index.Entry
	if err := out.Decode(in.Encode()); err != nil {
		t.Fatal(err)
	}
	if out.ModTime.IsZero() || !out.ModTime.Equal(time.Unix(0, 0)) {
		t.Errorf("the epoch came back as %v (zero: %v)", out.ModTime, out.ModTime.IsZero())
	}
	if !out.CreatedAt.Equal(time.Unix(-5, 0)) {
		t.Errorf("a time before 1970 came back as %v", out.CreatedAt)
	}
	if !out.ExpiresAt.IsZero() {
		t.Errorf("never came back as %v", out.ExpiresAt)
	}
	if out.Flags != index.FlagContentTypeSet {
		t.Errorf("flags came back as %#x", out.Flags)
	}
	far := index.Entry{ModTime: time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC)}
	if err := out.Decode(far.Encode()); err != nil || !out.ModTime.Equal(index.MaxTime) {
		t.Errorf("a time past 2262 came back as %v (%v), want it clamped to %v", out.ModTime, err, index.MaxTime)
	}
}
