package store_test

import (
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// utCopyStore copies the files of a store that is open, as a crash leaves
// them (what the page cache holds), xattrs included, without the lock.
func utCopyStore(t *testing.T, from, to string) {
	t.Helper()
	err := filepath.WalkDir(from, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if d.IsDir() {
			return os.MkdirAll(dst, 0o700)
		}
		if rel == "lock" {
			return nil
		}
		src, err := os.Open(p)
		if err != nil {
			return err
		}
		defer src.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
		if err != nil {
			return err
		}
		defer out.Close()
		if _, err := io.Copy(out, src); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		if n, err := unix.Getxattr(p, "user.iris.origin", buf); err == nil {
			_ = unix.Setxattr(dst, "user.iris.origin", buf[:n], 0)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

func utBlobPath(dir string, e index.Entry) string {
	return filepath.Join(dir, "blobs", hex.EncodeToString(e.Fingerprint[:1]), hex.EncodeToString(e.Fingerprint[:]))
}

// TestJournalRestoresShortValueFiles: a small put is durable through the
// index journal alone, its own file unsynced; a power cut may leave that
// file empty or without its name. Opening the store writes such files
// again from the journal, and so does an index rebuild, which also gives
// them their keys back. A value too large for the journal was synced in
// its file and is never in it.
func TestJournalRestoresShortValueFiles(t *testing.T) {
	live := t.TempDir()
	s := utOpenAt(t, live, store.Options{})
	var small []index.Entry
	for i := 0; i < 8; i++ {
		small = append(small, utPut(t, s, "task", fmt.Sprintf("k%d", i), fmt.Sprintf("small value %d", i), store.PutOptions{}))
	}
	big := strings.Repeat("b", index.JournalMaxAttach+1)
	utPut(t, s, "artifacts", "big", big, store.PutOptions{})
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.JournalCommits < int64(len(small)) || st.Checkpoints != 0 {
		t.Fatalf("%d journal commits, %d checkpoints: the puts did not go through the journal alone", st.JournalCommits, st.Checkpoints)
	}
	// What a power cut may leave of files named but not synced.
	damage := func(dir string) {
		for i, e := range small[:4] {
			p := utBlobPath(dir, e)
			if i%2 == 0 {
				if err := os.Truncate(p, 0); err != nil {
					t.Fatal(err)
				}
			} else if err := os.Remove(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	check := func(s *store.Store, what string) {
		t.Helper()
		for i := range small {
			utMustGet(t, s, "task", fmt.Sprintf("k%d", i), fmt.Sprintf("small value %d", i))
		}
		utMustGet(t, s, "artifacts", "big", big)
		if rep, err := s.Fsck(false); err != nil || len(rep.Problems) != 0 {
			t.Errorf("%s: fsck: %v %v", what, err, rep.Problems)
		}
	}

	t.Run("replay", func(t *testing.T) {
		dir := t.TempDir()
		utCopyStore(t, live, dir)
		damage(dir)
		check(utOpenAt(t, dir, store.Options{}), "after the replay")
	})
	t.Run("rebuild", func(t *testing.T) {
		dir := t.TempDir()
		utCopyStore(t, live, dir)
		damage(dir)
		utDamageIndex(t, dir, func(b []byte) []byte { return b[:4096] })
		_, err := store.Open(dir, store.Options{})
		if !errors.Is(err, store.ErrIndexDamaged) {
			t.Fatalf("Open of a damaged index: %v", err)
		}
		if _, err := store.RebuildIndex(dir, store.Options{}, err); err != nil {
			t.Fatal(err)
		}
		check(utOpenAt(t, dir, store.Options{}), "after the rebuild")
	})
}
