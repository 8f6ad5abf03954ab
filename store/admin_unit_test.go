package store_test

import (
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

func TestDelete(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	e := utPut(t, s, "task", "k", "bye", store.PutOptions{})
	utMustGet(t, s, "task", "k", "bye") // cached
	if err := s.Delete("task", "k"); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Get("task", "k")
	utMustFail(t, err, store.ErrNotFound, "Get after Delete")
	utMustFail(t, s.Delete("task", "k"), store.ErrNotFound, "second Delete")
	utMustFail(t, s.Delete("nosuch", "k"), store.ErrBadScope, "Delete in an unknown scope")
	utMustFail(t, s.Delete("task", "../k"), store.ErrBadKey, "Delete of a bad key")
	if _, err := os.Stat(s.BlobPath(e.Fingerprint)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob left after Delete: %v", err)
	}
	if st, _ := s.Stats(); st.HotEntries != 0 {
		t.Fatalf("hot cache still holds %d entries of deleted values", st.HotEntries)
	}
	if u, _ := s.ScopeUsage("task"); u.Keys != 0 || u.Bytes != 0 {
		t.Fatalf("usage after Delete: %+v", u)
	}
	utFsckClean(t, s)
}

func TestRename(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	a := utPut(t, s, "task", "a", "value of a", store.PutOptions{Meta: map[string]string{"m": "1"}, TTL: time.Hour})
	clk.Add(time.Minute)
	if err := s.Rename("task", "a", "b"); err != nil {
		t.Fatal(err)
	}
	_, _, err := s.Get("task", "a")
	utMustFail(t, err, store.ErrNotFound, "Get of the old name")
	b := utMustGet(t, s, "task", "b", "value of a")
	if b.Fingerprint != a.Fingerprint || b.Meta["m"] != "1" || !b.CreatedAt.Equal(a.CreatedAt) || !b.ExpiresAt.Equal(a.ExpiresAt) {
		t.Fatalf("Rename changed the entry: %+v -> %+v", a, b)
	}
	if u, _ := s.ScopeUsage("task"); u.Keys != 1 || u.Bytes != 10 {
		t.Fatalf("usage after Rename: %+v", u)
	}
	// Rename over an existing key replaces it and frees its blob.
	c := utPut(t, s, "task", "c", "old value of c", store.PutOptions{})
	if err := s.Rename("task", "b", "c"); err != nil {
		t.Fatal(err)
	}
	utMustGet(t, s, "task", "c", "value of a")
	if _, err := os.Stat(s.BlobPath(c.Fingerprint)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("replaced blob left: %v", err)
	}
	if u, _ := s.ScopeUsage("task"); u.Keys != 1 || u.Bytes != 10 {
		t.Fatalf("usage after Rename over a key: %+v", u)
	}
	// The expiry moved with the entry: it dies at the old instant.
	clk.Set(a.ExpiresAt)
	_, _, err = s.Get("task", "c")
	utMustFail(t, err, store.ErrNotFound, "renamed entry past its expiry")
	if res, _ := s.Prune(); res.Entries != 1 {
		t.Fatalf("Prune of the renamed entry: %+v", res)
	}

	utPut(t, s, "task", "x", "x", store.PutOptions{})
	utMustFail(t, s.Rename("task", "missing", "y"), store.ErrNotFound, "Rename of a missing key")
	utMustFail(t, s.Rename("task", "x", ".hidden"), store.ErrReservedKey, "Rename to a reserved name")
	utMustFail(t, s.Rename("task", "x", "a b"), store.ErrBadKey, "Rename to a bad name")
	utMustFail(t, s.Rename("task", "x", strings.Repeat("n", 256)), store.ErrNameTooLong, "Rename to a long name")
	utMustFail(t, s.Rename("nosuch", "x", "y"), store.ErrBadScope, "Rename in an unknown scope")
	if err := s.Rename("task", "x", "x"); err != nil {
		t.Fatalf("Rename to itself: %v", err)
	}
	utMustFail(t, s.Rename("task", "nope", "nope"), store.ErrNotFound, "Rename of a missing key to itself")
	utMustGet(t, s, "task", "x", "x")
	utFsckClean(t, s)
}

func TestUpdateMeta(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	orig := utPut(t, s, "task", "k", "value", store.PutOptions{Meta: map[string]string{"keep": "1"}})
	clk.Add(time.Hour)

	e, err := s.UpdateMeta("task", "k", func(e *index.Entry) error {
		e.ContentType = "text/x-new"
		e.Meta = map[string]string{"keep": "1", "added": "2"}
		e.Mode = 0o600
		e.ModTime = utT0.Add(-24 * time.Hour)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	got, _ := s.Lookup("task", "k")
	if got.ContentType != "text/x-new" || got.Meta["added"] != "2" || got.Mode != 0o600 || !got.ModTime.Equal(utT0.Add(-24*time.Hour)) {
		t.Fatalf("UpdateMeta not stored: %+v", got)
	}
	if !got.ExpiresAt.Equal(orig.ExpiresAt) || !e.ExpiresAt.Equal(orig.ExpiresAt) {
		t.Fatalf("UpdateMeta without a TTL change moved the expiry: %v -> %v", orig.ExpiresAt, got.ExpiresAt)
	}
	utMustGet(t, s, "task", "k", "value")

	// A changed TTL restarts the entry's life from now.
	now := utT0.Add(time.Hour)
	e, err = s.UpdateMeta("task", "k", func(e *index.Entry) error { e.TTL = 2 * time.Hour; return nil })
	if err != nil {
		t.Fatal(err)
	}
	if e.TTL != 2*time.Hour || !e.ExpiresAt.Equal(now.Add(2*time.Hour)) {
		t.Fatalf("TTL change: ttl %v expires %v, want %v", e.TTL, e.ExpiresAt, now.Add(2*time.Hour))
	}
	clk.Set(now.Add(2*time.Hour - time.Nanosecond))
	utMustGet(t, s, "task", "k", "value")
	clk.Set(now.Add(2 * time.Hour))
	_, _, err = s.Get("task", "k")
	utMustFail(t, err, store.ErrNotFound, "Get past the new expiry")

	// TTL 0 through UpdateMeta: never expires.
	clk.Set(now)
	utPut(t, s, "task", "k", "value", store.PutOptions{})
	e, err = s.UpdateMeta("task", "k", func(e *index.Entry) error { e.TTL = 0; return nil })
	if err != nil || !e.ExpiresAt.IsZero() {
		t.Fatalf("TTL 0: %+v %v", e.ExpiresAt, err)
	}
	clk.Add(1000 * time.Hour)
	utMustGet(t, s, "task", "k", "value")
	utFsckClean(t, s) // the expiry index followed

	// Refused changes leave the entry as it was.
	before, _ := s.Lookup("task", "k")
	for name, fn := range map[string]func(e *index.Entry) error{
		"size":         func(e *index.Entry) error { e.Size++; return nil },
		"fingerprint":  func(e *index.Entry) error { e.Fingerprint[0] ^= 1; return nil },
		"key":          func(e *index.Entry) error { e.Key = "other"; return nil },
		"scope":        func(e *index.Entry) error { e.Scope = "system"; return nil },
		"content type": func(e *index.Entry) error { e.ContentType = "bad\x00type"; e.Meta = nil; return nil },
		"meta name":    func(e *index.Entry) error { e.Meta = map[string]string{"no spaces": "x"}; return nil },
		"ttl":          func(e *index.Entry) error { e.TTL = -time.Hour; return nil },
	} {
		_, err := s.UpdateMeta("task", "k", fn)
		utMustFail(t, err, store.ErrBadArgument, "UpdateMeta changing "+name)
	}
	boom := errors.New("boom")
	_, err = s.UpdateMeta("task", "k", func(e *index.Entry) error { e.Mode = 0o777; return boom })
	utMustFail(t, err, boom, "UpdateMeta whose fn fails")
	after, _ := s.Lookup("task", "k")
	if after.Size != before.Size || after.Mode != before.Mode || after.ContentType != before.ContentType || len(after.Meta) != len(before.Meta) {
		t.Fatalf("refused updates changed the entry: %+v -> %+v", before, after)
	}
	_, err = s.UpdateMeta("task", "missing", func(e *index.Entry) error { return nil })
	utMustFail(t, err, store.ErrNotFound, "UpdateMeta of a missing key")
	utMustGet(t, s, "task", "k", "value")
	utFsckClean(t, s)
}
