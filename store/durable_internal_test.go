package store

import (
	"bytes"
	"crypto/sha256"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
)

// TestNameDurabilityDetected pins which order the store picks: rename then
// one fsync only where the filesystem is known to make the new name durable
// with the file (ext4 by its own driver, XFS), the portable order elsewhere.
func TestNameDurabilityDetected(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	var fi unix.Stat_t
	if err := unix.Stat(dir, &fi); err != nil {
		t.Fatal(err)
	}
	fstype := mountFSType(unix.Major(fi.Dev), unix.Minor(fi.Dev))
	want := syncDirAfterRename
	switch {
	case uint32(st.Type) == xfsSuperMagic:
		want = fileSyncAfterRename
	case uint32(st.Type) == ext4SuperMagic && (fstype == "ext4" || fstype == "ext3"):
		want = fileSyncAfterRename
	}
	if got := detectNameDurability(dir); got != want {
		t.Fatalf("%s (magic %#x, type %q): order %q, want %q", dir, st.Type, fstype, got, want)
	}
	t.Logf("%s: magic %#x, type %q: %s", dir, st.Type, fstype, want)
	if got := detectNameDurability("/proc"); got != syncDirAfterRename {
		t.Fatalf("/proc: %q, want the portable order", got)
	}
	if got := mountFSType(1<<20, 1<<19); got != "" {
		t.Fatalf("a device that is not mounted has type %q", got)
	}
}

// plantBlob puts a file under the blob name of fp holding body, as a put
// that renamed before its fsync leaves it after a power cut: whole name,
// missing or partial content, no index entry.
func plantBlob(t *testing.T, dir string, fp index.Fingerprint, body []byte) string {
	t.Helper()
	p := (&Store{dir: dir}).BlobPath(fp)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, body, 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

var durabilityOrders = []nameDurability{syncDirAfterRename, fileSyncAfterRename}

// TestPutNeverKeepsUntrustedBlob: a put of a value whose blob name already
// holds other bytes, referenced by no entry, publishes the value's own
// bytes, in either order (the fast order's RENAME_NOREPLACE fails, and the
// put replaces the name with its synced file).
func TestPutNeverKeepsUntrustedBlob(t *testing.T) {
	value := bytes.Repeat([]byte("acknowledged value "), 300)
	fp := index.Fingerprint(sha256.Sum256(value))
	for _, order := range durabilityOrders {
		for _, planted := range [][]byte{nil, value[:len(value)/2], bytes.Repeat([]byte{0}, len(value))} {
			t.Run(order.String(), func(t *testing.T) {
				s, err := Open(t.TempDir(), Options{})
				if err != nil {
					t.Fatal(err)
				}
				defer s.Close()
				<-s.sweepDone // the sweep would remove the planted file: the put must cope without it
				s.durability = order
				p := plantBlob(t, s.dir, fp, planted)
				if _, err := s.Put("task", "k", bytes.NewReader(value), PutOptions{}); err != nil {
					t.Fatal(err)
				}
				got, err := os.ReadFile(p)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(got, value) {
					t.Fatalf("blob holds %d bytes of the planted file, want the value's %d", len(got), len(value))
				}
				v, _, err := s.Get("task", "k")
				if err != nil || !bytes.Equal(v, value) {
					t.Fatalf("Get: %d bytes, %v", len(v), err)
				}
				rep, err := s.Fsck(false)
				if err != nil || !rep.Clean() {
					t.Fatalf("fsck: %v %v", err, rep)
				}
			})
		}
	}
}

// TestPutKeepsReferencedBlob: a second key with the same value shares the
// blob (dedup) in either order, and the first key's value stays readable.
func TestPutKeepsReferencedBlob(t *testing.T) {
	for _, order := range durabilityOrders {
		t.Run(order.String(), func(t *testing.T) {
			s, err := Open(t.TempDir(), Options{})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.durability = order
			value := strings.Repeat("shared ", 1000)
			e1, err := s.Put("task", "a", strings.NewReader(value), PutOptions{})
			if err != nil {
				t.Fatal(err)
			}
			e2, err := s.Put("task", "b", strings.NewReader(value), PutOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if e1.Fingerprint != e2.Fingerprint {
				t.Fatal("same value, two fingerprints")
			}
			for _, k := range []string{"a", "b"} {
				v, _, err := s.Get("task", k)
				if err != nil || string(v) != value {
					t.Fatalf("Get %s: %d bytes, %v", k, len(v), err)
				}
			}
			if !s.referenced(e1.Fingerprint) {
				t.Fatal("shared blob not referenced")
			}
			rep, err := s.Fsck(false)
			if err != nil || !rep.Clean() {
				t.Fatalf("fsck: %v %v", err, rep)
			}
		})
	}
}

// TestSweepRemovesUntrustedBlob: a blob file left under its final name
// with the wrong bytes and no entry (a put renamed it, then the power went
// before its fsync) is removed by the sweep when the store opens, never
// adopted; fsck then finds the store clean.
func TestSweepRemovesUntrustedBlob(t *testing.T) {
	dir := t.TempDir()
	s, err := Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put("task", "kept", strings.NewReader("a value"), PutOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Close()
	fp := index.Fingerprint(sha256.Sum256([]byte("the value that was being written")))
	p := plantBlob(t, dir, fp, []byte("the value th"))
	s, err = Open(dir, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.sweepDone
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("untrusted blob still there after the sweep: %v", err)
	}
	if v, _, err := s.Get("task", "kept"); err != nil || string(v) != "a value" {
		t.Fatalf("Get kept: %q %v", v, err)
	}
	rep, err := s.Fsck(false)
	if err != nil || !rep.Clean() {
		t.Fatalf("fsck: %v %v", err, rep)
	}
}

// TestFsckRemovesUntrustedBlob: fsck reports such a file as an orphan
// and --repair removes it.
func TestFsckRemovesUntrustedBlob(t *testing.T) {
	s, err := Open(t.TempDir(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	<-s.sweepDone
	fp := index.Fingerprint(sha256.Sum256([]byte("whole")))
	p := plantBlob(t, s.dir, fp, []byte("wh"))
	rep, err := s.Fsck(false)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clean() {
		t.Fatal("fsck found an unreferenced blob clean")
	}
	if _, err := s.Fsck(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(p); !os.IsNotExist(err) {
		t.Fatalf("fsck --repair left the untrusted blob: %v", err)
	}
	if rep, err := s.Fsck(false); err != nil || !rep.Clean() {
		t.Fatalf("fsck after repair: %v %v", err, rep)
	}
}
