package fs

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
)

// snapshot is everything the store holds, entries with all their metadata.
func (tm *testMount) snapshot(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, sc := range tm.store.Policy().Names() {
		es, err := tm.store.List(sc)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			lines = append(lines, fmt.Sprintf("%+v", e))
		}
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// refused runs op, wants errno, and wants the store unchanged by it.
func (tm *testMount) refused(t *testing.T, what string, errno syscall.Errno, op func() error) {
	t.Helper()
	before := tm.snapshot(t)
	wantErrno(t, what, op(), errno)
	if after := tm.snapshot(t); after != before {
		t.Errorf("%s changed the store:\nbefore %s\nafter  %s", what, before, after)
	}
}

// TestHostileXattrs: xattr names and values a caller should not be able to
// set each fail with their own errno and change nothing; the ones that are
// allowed (a 64 KiB binary metadata value) round-trip exactly.
func TestHostileXattrs(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "k")
	writeFile(t, p, []byte("value"))
	set := func(name string, v []byte, flags int) func() error {
		return func() error { return unix.Setxattr(p, name, v, flags) }
	}
	rm := func(name string) func() error { return func() error { return unix.Removexattr(p, name) } }

	// Values: the kernel's own limit is 64 KiB (E2BIG past it); the store
	// takes up to exactly that, bytes of any kind.
	tm.refused(t, "64 KiB + 1 value", syscall.E2BIG, set("user.iris.meta.big", bytes.Repeat([]byte("v"), 64<<10+1), 0))
	tm.refused(t, "1 MiB value", syscall.E2BIG, set("user.iris.meta.big", make([]byte, 1<<20), 0))
	binary := make([]byte, 64<<10)
	for i := range binary {
		binary[i] = byte(i * 7)
	}
	if err := unix.Setxattr(p, "user.iris.meta.bin", binary, 0); err != nil {
		t.Fatalf("64 KiB binary metadata: %v", err)
	}
	got := make([]byte, 70<<10)
	if n, err := unix.Getxattr(p, "user.iris.meta.bin", got); err != nil || !bytes.Equal(got[:n], binary) {
		t.Errorf("64 KiB binary metadata reads back %d bytes (%v), not what was set", n, err)
	}
	small := make([]byte, 10)
	if _, err := unix.Getxattr(p, "user.iris.meta.bin", small); err != syscall.ERANGE {
		t.Errorf("getxattr into a small buffer: %v, want ERANGE", err)
	}
	// Names: past the kernel's 255 bytes ERANGE; a metadata name outside
	// [A-Za-z0-9._-], empty or not UTF-8: EINVAL.
	tm.refused(t, "256-byte name", syscall.ERANGE, set("user.iris.meta."+strings.Repeat("n", 241), []byte("1"), 0))
	for _, name := range []string{"user.iris.meta.", "user.iris.meta.a/b", "user.iris.meta.a b", "user.iris.meta.\xff\xfe", "user.iris.meta.a\x01"} {
		tm.refused(t, fmt.Sprintf("metadata name %q", name), syscall.EINVAL, set(name, []byte("1"), 0))
	}
	// Values the store checks: content type (printable ASCII, 255 bytes), TTLs.
	tm.refused(t, "binary content type", syscall.EINVAL, set("user.iris.content_type", []byte("text/\x00plain"), 0))
	tm.refused(t, "non-ASCII content type", syscall.EINVAL, set("user.iris.content_type", []byte("text/\xffplain"), 0))
	tm.refused(t, "256-byte content type", syscall.EINVAL, set("user.iris.content_type", bytes.Repeat([]byte("a"), 256), 0))
	for _, v := range []string{"forever", "-1h", "1e400h", "101y", "", "\x00"} {
		tm.refused(t, fmt.Sprintf("ttl %q", v), syscall.EINVAL, set("user.iris.ttl", []byte(v), 0))
	}
	for _, v := range []string{"-1", "NaN", "Inf", "1e300", "abc"} {
		tm.refused(t, fmt.Sprintf("ttl_hours %q", v), syscall.EINVAL, set("user.iris.ttl_hours", []byte(v), 0))
	}
	// XATTR_CREATE of attributes every key has; XATTR_REPLACE of one it has not.
	tm.refused(t, "XATTR_CREATE content_type", syscall.EEXIST, set("user.iris.content_type", []byte("text/x"), unix.XATTR_CREATE))
	tm.refused(t, "XATTR_CREATE ttl", syscall.EEXIST, set("user.iris.ttl", []byte("1h"), unix.XATTR_CREATE))
	tm.refused(t, "XATTR_CREATE existing meta", syscall.EEXIST, set("user.iris.meta.bin", []byte("x"), unix.XATTR_CREATE))
	tm.refused(t, "XATTR_REPLACE missing meta", syscall.ENODATA, set("user.iris.meta.none", []byte("x"), unix.XATTR_REPLACE))
	// Reserved: the derived attributes and any other user.iris.* name.
	for _, name := range []string{"user.iris.fingerprint", "user.iris.sha256", "user.iris.created_at", "user.iris.expires_at", "user.iris.origin", "user.iris."} {
		tm.refused(t, "set "+name, syscall.EPERM, set(name, []byte("00"), 0))
		tm.refused(t, "remove "+name, syscall.EPERM, rm(name))
	}
	// Other names are not supported. Removing a user.* name that is not
	// there: ENODATA; the other namespaces do not exist here: ENOTSUP.
	for _, name := range []string{"user.other", "trusted.x", "security.x"} {
		tm.refused(t, "set "+name, syscall.ENOTSUP, set(name, []byte("1"), 0))
		want := syscall.ENODATA
		if !strings.HasPrefix(name, "user.") {
			want = syscall.ENOTSUP
		}
		tm.refused(t, "remove "+name, want, rm(name))
	}
	tm.refused(t, "remove a missing meta", syscall.ENODATA, rm("user.iris.meta.none"))
	// Directories have no attributes to set; virtual files take no changes.
	for _, d := range []string{tm.dir, tm.path("task")} {
		tm.refused(t, "set on "+d, syscall.ENOTSUP, func() error { return unix.Setxattr(d, "user.iris.meta.x", []byte("1"), 0) })
	}
	for _, v := range []string{tm.path(".stats"), tm.path("task", "_index.json")} {
		tm.refused(t, "set on "+v, syscall.EPERM, func() error { return unix.Setxattr(v, "user.iris.meta.x", []byte("1"), 0) })
		tm.refused(t, "remove on "+v, syscall.EPERM, func() error { return unix.Removexattr(v, "user.iris.meta.x") })
	}
	tm.wantValue(t, "task", "k", []byte("value"))
	// The binary value shows in the JSON views as valid JSON.
	if out := readFile(t, tm.path("task", "_index.json")); !json.Valid(out) {
		t.Errorf("_index.json is not valid JSON with a binary metadata value")
	}
}

// TestHostileNames: names of 255 and 256 bytes, bytes that are not UTF-8,
// "." and ".." in every position: each refusal has the contract's errno and
// changes nothing.
func TestHostileNames(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	writeFile(t, tm.path("task", "k"), []byte("value"))
	long255, long256 := strings.Repeat("n", 255), strings.Repeat("n", 256)
	create := func(name string) func() error {
		return func() error {
			f, err := os.OpenFile(tm.path("task", name), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err == nil {
				f.Close()
			}
			return err
		}
	}
	stat := func(elem ...string) func() error {
		return func() error { _, err := os.Lstat(tm.path(elem...)); return err }
	}

	writeFile(t, tm.path("task", long255), []byte("255"))
	tm.wantValue(t, "task", long255, []byte("255"))
	tm.refused(t, "create a 256-byte name", syscall.ENAMETOOLONG, create(long256))
	tm.refused(t, "stat a 256-byte name", syscall.ENAMETOOLONG, stat("task", long256))
	tm.refused(t, "stat a 256-byte name at the root", syscall.ENAMETOOLONG, stat(long256))
	tm.refused(t, "create a 1100-byte name", syscall.ENAMETOOLONG, create(strings.Repeat("n", 1100)))
	tm.refused(t, "rename to a 256-byte name", syscall.ENAMETOOLONG, func() error { return os.Rename(tm.path("task", "k"), tm.path("task", long256)) })

	for _, name := range []string{"a\xff", "\xc3\x28", "\xed\xa0\x80", "caf\xc3\xa9", "a\x7f", "a\nb"} {
		tm.refused(t, fmt.Sprintf("create %q", name), syscall.EINVAL, create(name))
		tm.refused(t, fmt.Sprintf("stat %q", name), syscall.ENOENT, stat("task", name))
		tm.refused(t, fmt.Sprintf("rename to %q", name), syscall.EINVAL, func() error { return os.Rename(tm.path("task", "k"), tm.path("task", name)) })
	}
	for _, name := range []string{"...", ".k", "_k", ". .", ".." + "x"} {
		tm.refused(t, fmt.Sprintf("create %q", name), syscall.EINVAL, create(name))
	}
	// "." and "..": the kernel resolves them; none reaches a key.
	tm.refused(t, "create task/../x (a file at the root)", syscall.EPERM, func() error {
		return os.WriteFile(tm.dir+"/task/../x", []byte("v"), 0o644)
	})
	tm.refused(t, "create task/./.", syscall.EISDIR, func() error {
		return os.WriteFile(tm.dir+"/task/./.", []byte("v"), 0o644)
	})
	tm.refused(t, "rename k to .", syscall.EBUSY, func() error { return syscall.Rename(tm.path("task", "k"), tm.dir+"/task/.") })
	tm.refused(t, "rename k to ..", syscall.EBUSY, func() error { return syscall.Rename(tm.path("task", "k"), tm.dir+"/task/..") })
	tm.refused(t, "rename task/.. away", syscall.EBUSY, func() error { return syscall.Rename(tm.dir+"/task/..", tm.path("task", "x")) })
	tm.refused(t, "unlink task/..", syscall.EISDIR, func() error { return syscall.Unlink(tm.dir + "/task/..") })
	tm.refused(t, "rmdir task/.", syscall.EINVAL, func() error { return syscall.Rmdir(tm.dir + "/task/.") })
	tm.refused(t, "k/.. (a file is not a directory)", syscall.ENOTDIR, func() error {
		var st syscall.Stat_t
		return syscall.Lstat(tm.dir+"/task/k/..", &st)
	})
	tm.refused(t, "rename across scopes by ..", syscall.EXDEV, func() error {
		return os.Rename(tm.path("task", "k"), tm.dir+"/task/../project/k")
	})
	if got := readFile(t, tm.dir+"/project/../task/./k"); string(got) != "value" {
		t.Errorf("task/k through ./..: %q", got)
	}
	if got := listDir(t, tm.path("task")); len(got) != 3 {
		t.Errorf("task lists %q", got)
	}
}

// TestWriteAfterFailedStartNotPublished: when a write could not even start
// staging (the store refused to make the writer: here its directory went
// read-only while the old value, too large to stage in memory, had to be
// copied to a temporary file), the file is failed for good: a later write
// that would work does not get a value with a hole published, and close
// reports the error.
func TestWriteAfterFailedStartNotPublished(t *testing.T) {
	requireFUSE(t)
	root := t.TempDir()
	storeDir := filepath.Join(root, "store")
	tm := mountStore(t, mountOptions{storeDir: storeDir})
	p := tm.path("task", "k")
	old := append([]byte("0123456789"), bytes.Repeat([]byte("."), index.JournalMaxAttach)...)
	writeFile(t, p, old)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	readOnly(t, storeDir)
	_, err = f.WriteAt([]byte("AB"), 0)
	wantErrno(t, "write with the store read-only", err, syscall.EROFS)
	writable(t, storeDir)
	_, err = f.WriteAt([]byte("CD"), 4)
	wantErrno(t, "the next write, the store writable again", err, syscall.EROFS)
	wantErrno(t, "close", f.Close(), syscall.EROFS)
	tm.wantValue(t, "task", "k", old)
}

// readOnly bind-mounts dir read-only over itself: what a store sees when
// its filesystem goes read-only under it (files it has open stay writable,
// which the kernel allows only to a read-only bind, not a remount).
func readOnly(t *testing.T, dir string) {
	t.Helper()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		unix.Unmount(dir, unix.MNT_DETACH)
		t.Skipf("read-only remount of the bind: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
}

func writable(t *testing.T, dir string) {
	t.Helper()
	// Detached, not unmounted: files the store opened through the bind keep
	// it busy, and what matters is that new opens reach the writable disk.
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Fatalf("unmount the read-only bind: %v", err)
	}
}
