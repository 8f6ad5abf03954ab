package store

import (
	"bytes"
	"errors"
	"os"
	"testing"
)

// TestLargeValueVerifiedOnceWhileUnchanged pins the mechanism behind cheap
// re-opens of large values: a blob that passed verification is trusted again
// only while its file identity (inode, size, mtime, ctime) is unchanged.
func TestLargeValueVerifiedOnceWhileUnchanged(t *testing.T) {
	s, err := Open(t.TempDir(), Options{HotEntryMax: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	value := bytes.Repeat([]byte("verify me "), 1000)
	e, err := s.Put("task", "big", bytes.NewReader(value), PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	path := s.BlobPath(e.Fingerprint)
	identityOf := func() fileIdentity {
		f, err := os.Open(path)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		id, err := identify(f)
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	if s.verified.ok(e.Fingerprint, identityOf()) {
		t.Fatal("a blob counts as verified before any read")
	}
	v, err := s.Open("task", "big")
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
	id := identityOf()
	if !s.verified.ok(e.Fingerprint, id) {
		t.Fatal("a verified large blob is not remembered")
	}

	// Change the bytes in place: the identity changes, so the next open
	// hashes again and refuses the value.
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, bytes.ToUpper(value), 0o644); err != nil {
		t.Fatal(err)
	}
	changed := identityOf()
	if changed == id {
		t.Fatal("rewriting the file did not change its identity")
	}
	if s.verified.ok(e.Fingerprint, changed) {
		t.Fatal("a changed file counts as verified")
	}
	if _, err := s.Open("task", "big"); !errors.Is(err, ErrIntegrity) {
		t.Fatalf("Open of a rewritten blob: %v", err)
	}

	// While the recorded identity matches, Open trusts the file without
	// hashing it: pretend the rewritten file was the one verified, and it
	// is served as is. (This is what makes a re-open cost an fstat.)
	s.verified.remember(e.Fingerprint, changed)
	failures := s.counters.VerifyFailures.Load()
	v, err = s.Open("task", "big")
	if err != nil {
		t.Fatalf("Open with a matching verified identity hashed the file again: %v", err)
	}
	v.Close()
	if s.counters.VerifyFailures.Load() != failures {
		t.Fatal("verification ran although the file identity matched")
	}

	// Deleting the key forgets the verification along with the blob.
	s.verified.remember(e.Fingerprint, id)
	if err := s.Delete("task", "big"); err != nil {
		t.Fatal(err)
	}
	if s.verified.ok(e.Fingerprint, id) {
		t.Fatal("a removed blob is still remembered as verified")
	}
}
