package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

func TestOpenCreatesLayout(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "nested", "store")
	s := utOpenAt(t, dir, store.Options{})
	for _, d := range []string{"tmp", "quarantine", "blobs/00", "blobs/ff", "blobs/a7"} {
		fi, err := os.Stat(filepath.Join(dir, d))
		if err != nil || !fi.IsDir() {
			t.Errorf("%s: %v", d, err)
		}
	}
	for _, f := range []string{"index.db", "lock"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Errorf("%s: %v", f, err)
		}
	}
	if s.Dir() != dir {
		t.Errorf("Dir() = %q, want %q", s.Dir(), dir)
	}
	if !slices.Equal(s.Policy().Names(), []string{"system", "instructions", "project", "task", "artifacts"}) {
		t.Errorf("default policy: %v", s.Policy().Names())
	}
	// A relative directory is made absolute.
	wd, _ := os.Getwd()
	rel, err := filepath.Rel(wd, filepath.Join(t.TempDir(), "rel"))
	if err != nil {
		t.Skip("no relative path to the temp dir")
	}
	r := utOpenAt(t, rel, store.Options{})
	if !filepath.IsAbs(r.Dir()) {
		t.Errorf("Dir() of a relative store: %q", r.Dir())
	}
}

func TestSecondOpenIsLocked(t *testing.T) {
	dir := t.TempDir()
	s := utOpenAt(t, dir, store.Options{})
	utPut(t, s, "task", "k", "v", store.PutOptions{})

	s2, err := store.Open(dir, store.Options{})
	if err == nil {
		s2.Close()
		t.Fatal("a second Open of the same store succeeded")
	}
	if !errors.Is(err, store.ErrLocked) {
		t.Fatalf("second Open: %v, want ErrLocked", err)
	}
	pid := strconv.Itoa(os.Getpid())
	if !strings.Contains(err.Error(), "pid "+pid) {
		t.Fatalf("error %q does not name the holder's pid %s", err, pid)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error is not one line: %q", err)
	}
	if got, held := store.LockHolder(dir); got != os.Getpid() || !held {
		t.Fatalf("LockHolder = %d, %v", got, held)
	}
	// The failed open did not disturb the owner.
	utMustGet(t, s, "task", "k", "v")

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, held := store.LockHolder(dir); held {
		t.Fatal("lock still held after Close")
	}
	s3 := utOpenAt(t, dir, store.Options{})
	utMustGet(t, s3, "task", "k", "v")
	if pid, held := store.LockHolder(t.TempDir()); pid != 0 || held {
		t.Fatalf("LockHolder of a directory without a store: %d %v", pid, held)
	}
}

func TestOpenSweepsLeftovers(t *testing.T) {
	dir := t.TempDir()
	s := utOpenAt(t, dir, store.Options{})
	utPut(t, s, "task", "live", "live value", store.PutOptions{})
	orphan := s.BlobPath(utFP("left by a crash"))
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	// What a crash may leave: a half-written value in tmp/, a blob whose
	// index commit never happened, and something that is not a blob.
	tmpFile := filepath.Join(dir, "tmp", "deadbeef.tmp")
	if err := os.WriteFile(tmpFile, []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(orphan, []byte("left by a crash"), 0o444); err != nil {
		t.Fatal(err)
	}
	stray := filepath.Join(dir, "blobs", "0a", "not-a-blob")
	if err := os.WriteFile(stray, []byte("?"), 0o600); err != nil {
		t.Fatal(err)
	}

	s = utOpenAt(t, dir, store.Options{})
	// tmp/ is emptied before Open returns.
	if tmp := utTmpFiles(t, dir); len(tmp) != 0 {
		t.Fatalf("tmp files after Open: %v", tmp)
	}
	// The blob sweep runs in the background; Fsck waits for it, and then
	// finds nothing left to complain about.
	utFsckClean(t, s)
	for _, p := range []string{orphan, stray} {
		if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s survived the open sweep: %v", p, err)
		}
	}
	utMustGet(t, s, "task", "live", "live value")
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("blob files: %v", files)
	}

	// Close waits for the sweep (which may stop early: what it leaves is
	// swept by a later open). Either way the store reopens clean.
	s.Close()
	if err := os.WriteFile(orphan, []byte("left by a crash"), 0o444); err != nil {
		t.Fatal(err)
	}
	s = utOpenAt(t, dir, store.Options{})
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s = utOpenAt(t, dir, store.Options{})
	utFsckClean(t, s)
	if _, err := os.Stat(orphan); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan survived: %v", err)
	}
	utMustGet(t, s, "task", "live", "live value")
}

func TestOpenRejectsForeignIndex(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "index.db"), []byte("this is not a bbolt file, not at all, no"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(dir, store.Options{})
	if err == nil {
		s.Close()
		t.Fatal("Open over a foreign index.db succeeded")
	}
	// The failed open released its lock.
	if _, held := store.LockHolder(dir); held {
		t.Fatal("failed Open left the lock held")
	}
}

// Whatever is in tmp/ when the store opens is left over (no writer can be
// live before Open returns), directories included: it must not stop the
// store from opening, or fsck --repair could never run.
func TestOpenSweepsDirectoryInTmp(t *testing.T) {
	dir := t.TempDir()
	s := utOpenAt(t, dir, store.Options{})
	utPut(t, s, "task", "k", "v", store.PutOptions{})
	s.Close()
	if err := os.MkdirAll(filepath.Join(dir, "tmp", "stray-dir", "sub"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "tmp", "stray-dir", "sub", "f"), []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("Open with a directory in tmp/: %v", err)
	}
	defer s.Close()
	if tmp := utTmpFiles(t, dir); len(tmp) != 0 {
		t.Fatalf("tmp/ after Open: %v", tmp)
	}
	utMustGet(t, s, "task", "k", "v")
}
