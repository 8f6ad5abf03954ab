package instructions_test

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/fs"
	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/store"
)

// TestSelfHealingThroughMount: with the guard behind a real mount, an
// instruction set that was deleted, has expired, or is corrupt on disk
// reads back canonical through cat-like reads, never ENOENT or EIO. On a
// read-only mount, where files are verified at their first read rather
// than at open, too.
func TestSelfHealingThroughMount(t *testing.T) {
	t.Run("writable", func(t *testing.T) { selfHealingThroughMount(t, false) })
	t.Run("read-only", func(t *testing.T) { selfHealingThroughMount(t, true) })
}

func selfHealingThroughMount(t *testing.T, readOnly bool) {
	if _, err := os.Stat("/dev/fuse"); err != nil || os.Geteuid() != 0 {
		if os.Getenv("IRISKVFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("IRISKVFS_REQUIRE_FUSE=1 but FUSE is unusable here (root: %v, /dev/fuse: %v)", os.Geteuid() == 0, err)
		}
		t.Skip("needs root and /dev/fuse")
	}
	var offset atomic.Int64
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	// HotBytes 1: nothing is served from memory, so corruption on disk
	// reaches the read path.
	s, err := store.Open(t.TempDir(), store.Options{Now: clock, HotBytes: 1, TrackReads: []string{instructions.Scope}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := instructions.Seed(s, false); err != nil {
		t.Fatal(err)
	}
	g := instructions.StartGuard(s, slog.New(slog.DiscardHandler))
	defer g.Stop()
	mnt := t.TempDir()
	m, err := fs.MountStore(mnt, s, fs.MountConfig{Options: fs.Options{Heal: g.Heal, ReadOnly: readOnly}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := m.Unmount(); err != nil {
			t.Error(err)
		}
	}()
	sets := instructions.Canonical()
	path := func(i int) string { return filepath.Join(mnt, instructions.Scope, sets[i].Key) }
	mustRead := func(what string, i int) {
		t.Helper()
		b, err := os.ReadFile(path(i))
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if !bytes.Equal(b, sets[i].Content) {
			t.Fatalf("%s: read %d bytes, not the canonical set", what, len(b))
		}
	}
	mustRead("seeded", 0)

	if readOnly {
		if err := s.Delete(instructions.Scope, sets[0].Key); err != nil {
			t.Fatal(err)
		}
		m.Settle()
	} else if err := os.Remove(path(0)); err != nil {
		t.Fatal(err)
	}
	mustRead("after rm", 0)

	e, err := s.Lookup(instructions.Scope, sets[1].Key)
	if err != nil {
		t.Fatal(err)
	}
	corrupt(t, s, e)
	mustRead("after corruption", 1)

	offset.Store(int64(200 * time.Hour)) // every set has expired
	mustRead("after expiry", 2)
	if _, err := os.Stat(path(3)); err != nil {
		t.Fatalf("stat after expiry: %v", err)
	}
	if g.Restored() < 3 {
		t.Errorf("guard restored %d times, want at least 3", g.Restored())
	}
}
