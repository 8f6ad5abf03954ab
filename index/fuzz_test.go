package index_test

import (
	"bytes"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// FuzzDecodeEntry checks that Decode never panics on any input and that a
// record it accepts survives Encode/Decode unchanged (and then re-encodes
// to the same bytes: the encoding is canonical for a decoded entry).
func FuzzDecodeEntry(f *testing.F) {
	full := fullEntry()
	f.Add(full.Encode())
	empty := index.Entry{}
	f.Add(empty.Encode())
	never := index.Entry{ContentType: "application/octet-stream", Size: 4096, CreatedAt: time.Unix(1700000000, 0), TTL: 0, Mode: 0o644}
	f.Add(never.Encode())
	f.Add([]byte{})
	f.Add([]byte{1})
	f.Add([]byte{2, 0})
	f.Add(validHead(-1, 0).uvarint(0).b)
	f.Add(validHead(1, 0).uvarint(index.MaxMetaEntries + 1).b)
	f.Add(validHead(1, 0).uvarint(2).str("a").str("1").str("a").str("2").b) // duplicate meta name
	f.Add(append(full.Encode(), 0))

	f.Fuzz(func(t *testing.T, rec []byte) {
		e := index.Entry{Scope: "s", Key: "k"}
		err := e.Decode(rec)
		// DecodeAttrs (listings) accepts exactly the records Decode does,
		// and reads the same attributes from them.
		var a index.Attrs
		if aerr := a.DecodeAttrs(rec); (aerr == nil) != (err == nil) {
			t.Fatalf("Decode: %v, DecodeAttrs: %v\nrecord %x", err, aerr, rec)
		} else if err == nil && a != e.Attrs() {
			t.Fatalf("DecodeAttrs read %+v, Decode %+v", a, e.Attrs())
		}
		if err != nil {
			return
		}
		if e.Scope != "s" || e.Key != "k" {
			t.Fatalf("Decode changed the address: %q/%q", e.Scope, e.Key)
		}
		if e.Size < 0 || e.TTL < 0 {
			t.Fatalf("Decode accepted a negative size or ttl: %d %d", e.Size, e.TTL)
		}
		if len(e.ContentType) > index.MaxContentType || len(e.Meta) > index.MaxMetaEntries {
			t.Fatalf("Decode accepted a record past the limits")
		}
		enc := e.Encode()
		e2 := index.Entry{Scope: "s", Key: "k"}
		if err := e2.Decode(enc); err != nil {
			t.Fatalf("re-encoded record does not decode: %v\nrecord %x", err, enc)
		}
		if !entriesEqual(&e, &e2) {
			t.Fatalf("round trip changed the entry:\n%+v\n%+v", e, e2)
		}
		if enc2 := e2.Encode(); !bytes.Equal(enc, enc2) {
			t.Fatalf("encoding is not stable:\n%x\n%x", enc, enc2)
		}
	})
}
