package fs

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// The tests below list a scope in small getdents calls (4 KiB: ~25 names
// per READDIRPLUS), so that a listing spans many requests and the daemon
// makes inodes ahead of them (dirHandle.prepare), and change things
// between two calls.

const prepKeys = 1000

func prepKey(i int) string { return fmt.Sprintf("k%04d", i) }

// putPrepKeys puts prepKeys one-byte keys through the store.
func putPrepKeys(t *testing.T, tm *testMount) {
	t.Helper()
	for i := 0; i < prepKeys; i++ {
		tm.put("task", prepKey(i), []byte("v"), store.PutOptions{})
	}
	tm.m.Settle()
}

type dirent struct {
	name string
	off  int64
}

// getdents is one getdents64 call of bufSize bytes on fd.
func getdents(t *testing.T, fd, bufSize int) []dirent {
	t.Helper()
	buf := make([]byte, bufSize)
	n, err := syscall.Getdents(fd, buf)
	if err != nil {
		t.Fatalf("getdents: %v", err)
	}
	var out []dirent
	for b := buf[:n]; len(b) > 0; {
		reclen := int(binary.LittleEndian.Uint16(b[16:18]))
		name := b[19:reclen]
		name = name[:bytes.IndexByte(name, 0)]
		out = append(out, dirent{name: string(name), off: int64(binary.LittleEndian.Uint64(b[8:16]))})
		b = b[reclen:]
	}
	return out
}

// openDir opens dir for getdents; the test's cleanup closes it.
func openDir(t *testing.T, dir string) int {
	t.Helper()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	return fd
}

// listRest reads fd to its end in small calls.
func listRest(t *testing.T, fd int) []string {
	t.Helper()
	var names []string
	for {
		ds := getdents(t, fd, 4096)
		if len(ds) == 0 {
			return names
		}
		for _, d := range ds {
			names = append(names, d.name)
		}
	}
}

func lstatIno(t *testing.T, path string) (uint64, int64, error) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Lstat(path, &st); err != nil {
		return 0, 0, err
	}
	return st.Ino, st.Size, nil
}

// bothPrepModes runs test with inodes made ahead by the listing's
// goroutines, then with every name left to the request (as when a
// goroutine is not scheduled in time).
func bothPrepModes(t *testing.T, test func(t *testing.T)) {
	t.Run("ahead", test)
	t.Run("inline", func(t *testing.T) {
		prepInline.Store(true)
		defer prepInline.Store(false)
		test(t)
	})
}

// TestListingPreparedInodesSeeChanges: a key deleted or replaced after
// the listing was taken, while the daemon has its inode made ahead, shows
// as the store has it when the listing reaches it: no stale size, no
// deleted file.
func TestListingPreparedInodesSeeChanges(t *testing.T) {
	bothPrepModes(t, testPreparedInodesSeeChanges)
}

func testPreparedInodesSeeChanges(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	putPrepKeys(t, tm)
	fd := openDir(t, tm.path("task"))
	first := getdents(t, fd, 4096)
	if len(first) == 0 || len(first) > 100 {
		t.Fatalf("first getdents gave %d names, want a few dozen", len(first))
	}
	// Names in the batch being prepared, and in the one after.
	deleted, replaced := prepKey(len(first)+20), prepKey(len(first)+300)
	if err := tm.store.Delete("task", deleted); err != nil {
		t.Fatal(err)
	}
	tm.put("task", replaced, []byte("longer"), store.PutOptions{})
	tm.m.Settle()
	rest := listRest(t, fd)
	if n := len(first) + len(rest); n != prepKeys+1 {
		t.Errorf("listed %d names, want %d (the listing's own snapshot)", n, prepKeys+1)
	}
	for _, name := range rest {
		ino, size, err := lstatIno(t, tm.path("task", name))
		switch {
		case name == deleted:
			if err != syscall.ENOENT {
				t.Errorf("lstat of %s, deleted during the listing: ino %d size %d err %v, want ENOENT", name, ino, size, err)
			}
		case err != nil:
			t.Errorf("lstat %s: %v", name, err)
		case name == replaced && size != int64(len("longer")):
			t.Errorf("%s, replaced during the listing, has size %d, want %d", name, size, len("longer"))
		case name != replaced && name != indexName && size != 1:
			t.Errorf("%s has size %d, want 1", name, size)
		}
	}
}

// TestListingPreparedInodesKeepIdentity: a name looked up while the
// listing is under way keeps the inode the lookup gave it (the listing
// does not hand out the one it made ahead), a re-read after a seek gives
// the same inodes again, and every name has one inode.
func TestListingPreparedInodesKeepIdentity(t *testing.T) {
	bothPrepModes(t, testPreparedInodesKeepIdentity)
}

func testPreparedInodesKeepIdentity(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	putPrepKeys(t, tm)
	fd := openDir(t, tm.path("task"))
	first := getdents(t, fd, 4096)
	looked := prepKey(len(first) + 10)
	before, _, err := lstatIno(t, tm.path("task", looked))
	if err != nil {
		t.Fatal(err)
	}
	second := getdents(t, fd, 4096)
	inos := map[string]uint64{}
	for _, d := range second {
		if inos[d.name], _, err = lstatIno(t, tm.path("task", d.name)); err != nil {
			t.Fatal(err)
		}
	}
	// Back to the middle of the first answer, then on to the end.
	mid := first[len(first)/2]
	if _, err := syscall.Seek(fd, mid.off, 0); err != nil {
		t.Fatal(err)
	}
	again := listRest(t, fd)
	want := []string{}
	for _, d := range append(first[len(first)/2+1:], second...) {
		want = append(want, d.name)
	}
	if len(again) < len(want) || !slices.Equal(again[:len(want)], want) {
		t.Fatalf("after seekdir to %d: %q..., want %q...", mid.off, again[:min(len(again), 5)], want[:min(len(want), 5)])
	}
	if n := len(first)/2 + 1 + len(again); n != prepKeys+1 {
		t.Errorf("after seekdir: %d names in all, want %d", n, prepKeys+1)
	}
	seen := map[uint64]string{}
	for _, name := range again {
		ino, _, err := lstatIno(t, tm.path("task", name))
		if err != nil {
			t.Fatalf("lstat %s: %v", name, err)
		}
		if other, dup := seen[ino]; dup {
			t.Errorf("%s and %s share inode %d", name, other, ino)
		}
		seen[ino] = name
		if was, ok := inos[name]; ok && was != ino {
			t.Errorf("%s: inode %d before the seek, %d after", name, was, ino)
		}
		if name == looked && ino != before {
			t.Errorf("%s: inode %d from a lookup during the listing, %d after it", name, before, ino)
		}
	}
	// A rewind lists the scope again, whole.
	if _, err := syscall.Seek(fd, 0, 0); err != nil {
		t.Fatal(err)
	}
	if all := listRest(t, fd); len(all) != prepKeys+1 {
		t.Errorf("after rewinddir: %d names, want %d", len(all), prepKeys+1)
	}
}

// TestListingPreparedInodesNotKept: inodes made ahead for names the
// kernel never got stay out of the daemon's tree, and the names the kernel
// got leave it when the kernel forgets them (drop_caches): a listing
// leaves nothing behind.
func TestListingPreparedInodesNotKept(t *testing.T) { bothPrepModes(t, testPreparedInodesNotKept) }

func testPreparedInodesNotKept(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	putPrepKeys(t, tm)
	scope := tm.m.root.fs.scopes["task"]
	children := func() int { return len(scope.Children()) }
	base := children() // _index.json

	fd, err := syscall.Open(tm.path("task"), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	first := getdents(t, fd, 4096)
	syscall.Close(fd)
	// The kernel got the names of one answer with their attributes (all
	// but _index.json, which is sent without); the daemon made inodes for
	// a batch or two ahead.
	if got, want := children()-base, len(first)-1; got != want {
		t.Errorf("after one READDIRPLUS of %d names the scope has %d key inodes, want %d", len(first), got, want)
	}

	if got := len(listDir(t, tm.path("task"))); got != prepKeys+1 {
		t.Fatalf("ls: %d names", got)
	}
	if got := children() - base; got != prepKeys {
		t.Errorf("after a whole listing the scope has %d key inodes, want %d", got, prepKeys)
	}
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("2"), 0); err != nil {
		t.Skipf("cannot drop the kernel's caches: %v", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for children() != base && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if got := children() - base; got != 0 {
		t.Errorf("10 s after drop_caches the scope still has %d key inodes, want 0", got)
	}
}
