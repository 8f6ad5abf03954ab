package fs

import (
	"os"
	"sort"
	"strings"
	"syscall"
	"testing"

	"github.com/hanwen/go-fuse/v2/posixtest"
	"golang.org/x/sys/unix"
)

// posixSkip lists the go-fuse posixtest cases that do not apply to a scope
// directory, which is a flat directory of regular files, and why.
var posixSkip = map[string]string{
	// Directories, symlinks and hard links are refused with EPERM by the
	// contract (TestErrnoNotRegularFiles checks that).
	"DirSeek":                    "creates a directory",
	"MkdirRmdir":                 "creates a directory",
	"OpenAt":                     "creates and renames a directory",
	"RenameOpenDir":              "creates directories",
	"RenameOverwriteDestExist":   "renames into a subdirectory it creates (TestPosixRenameKeepsInode is the flat version)",
	"RenameOverwriteDestNoExist": "renames into a subdirectory it creates (TestPosixRenameKeepsInode is the flat version)",
	"Link":                       "hard links: EPERM",
	"LinkUnlinkRename":           "hard links: EPERM",
	"SymlinkReadlink":            "symlinks: EPERM",
	"SetattrSymlink":             "symlinks: EPERM",
	"OpenSymlinkRace":            "symlinks: EPERM",
	// A scope always lists its _index.json besides the keys.
	"ReadDirBasic": "expects the directory to list only the files it created; a scope also lists _index.json",
	// Only user.iris.* attributes exist (TestXattrs covers the same steps
	// with user.iris.meta.*).
	"XAttr": "sets user.xattrtest; only user.iris.* attributes exist (ENOTSUP)",
	// Not implemented: write handles have no Allocate, so fallocate(2)
	// fails with EOPNOTSUPP (glibc's posix_fallocate then writes zeros).
	"Fallocate":         "not supported: fallocate(2) gives EOPNOTSUPP",
	"FallocateKeepSize": "not supported: fallocate(2) gives EOPNOTSUPP",
	// These open the file a second time while the os.Create that made it
	// is still open; see TestOpenWhileCreating. TestPosixLocks runs them
	// on a file that was closed first.
	"FcntlFlockLocksFile": "BUG: reopens a file that is still being created (ENOENT, see TestOpenWhileCreating)",
	"FcntlFlockSetLk":     "BUG: reopens a file that is still being created (ENOENT, see TestOpenWhileCreating)",
}

// TestPosix runs go-fuse's posixtest cases that apply, each in the task
// scope of a fresh mount.
func TestPosix(t *testing.T) {
	names := make([]string, 0, len(posixtest.All))
	for name := range posixtest.All {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fn := posixtest.All[name]
		t.Run(name, func(t *testing.T) {
			if why, ok := posixSkip[name]; ok {
				if !strings.HasPrefix(why, "BUG") && !strings.HasPrefix(why, "not supported") {
					why = "not applicable: " + why
				}
				t.Skip(why)
			}
			tm := mountStore(t, mountOptions{})
			fn(t, tm.path("task"))
		})
	}
}

// TestPosixRenameKeepsInode is RenameOverwriteDest{Exist,NoExist} in a
// flat directory: the renamed file keeps its inode, the old name is gone,
// and a file renamed over is unlinked.
func TestPosixRenameKeepsInode(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	for _, destExists := range []bool{false, true} {
		src, dst := tm.path("task", "file"), tm.path("task", "renamed")
		writeFile(t, src, []byte("hello"))
		if destExists {
			writeFile(t, dst, []byte("xx"))
		}
		var st syscall.Stat_t
		if err := syscall.Lstat(src, &st); err != nil {
			t.Fatal(err)
		}
		before := st.Ino
		if err := os.Rename(src, dst); err != nil {
			t.Fatalf("rename (dest exists: %v): %v", destExists, err)
		}
		if _, err := os.Lstat(src); err == nil {
			t.Errorf("old name still there")
		}
		if err := syscall.Lstat(dst, &st); err != nil {
			t.Fatal(err)
		}
		if st.Ino != before {
			t.Errorf("dest exists %v: inode %d after rename, %d before", destExists, st.Ino, before)
		}
		tm.wantValue(t, "task", "renamed", []byte("hello"))
		os.Remove(dst)
	}
}

// TestPosixLocks is FcntlFlockSetLk and FcntlFlockLocksFile on files that
// were closed before they are opened again.
func TestPosixLocks(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	for i, cmd := range []int{syscall.F_SETLK, syscall.F_SETLKW} {
		fn := tm.path("task", "file"+string(rune('0'+i)))
		writeFile(t, fn, nil)
		f1, err := os.OpenFile(fn, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f1.Close()
		wlk := syscall.Flock_t{Type: syscall.F_WRLCK}
		if err := syscall.FcntlFlock(f1.Fd(), cmd, &wlk); err != nil {
			t.Fatalf("FcntlFlock: %v", err)
		}
		f2, err := os.OpenFile(fn, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer f2.Close()
		lk := syscall.Flock_t{}
		if err := syscall.FcntlFlock(f2.Fd(), unix.F_OFD_GETLK, &lk); err != nil {
			t.Errorf("F_OFD_GETLK: %v", err)
		}
		if lk.Type != syscall.F_WRLCK {
			t.Errorf("got lock type %v, want F_WRLCK", lk.Type)
		}
	}
	// flock(1) across processes: the second holder waits or fails.
	fn := tm.path("task", "lockfile")
	writeFile(t, fn, nil)
	f, err := os.Open(fn)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatalf("flock: %v", err)
	}
	if _, err := runErr("flock", "-n", fn, "true"); err == nil {
		t.Errorf("flock -n on a file locked by another process succeeded")
	}
}

// TestOpenWhileCreating: a file created and not yet closed can be opened
// again by name (as on any POSIX filesystem), e.g. by the same program.
func TestOpenWhileCreating(t *testing.T) {
	t.Skip("BUG: a second open(2) of a file that is still being created (os.Create not yet closed) fails " +
		"with ENOENT: keyFile.Open answers ESTALE for a pending inode, and the kernel's re-lookup finds no " +
		"key in the store (the value is published at close). stat(2) of the name works meanwhile. Programs " +
		"that create a file and reopen it before closing the first descriptor (posixtest " +
		"FcntlFlockSetLk/FcntlFlockLocksFile, `exec 3>f; cat f`, lock files) break. A read-only reopen " +
		"could be served an empty value, and a write reopen could share the pending inode's staging.")
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "new")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	g, err := os.Open(p)
	if err != nil {
		t.Fatalf("second open of a file being created: %v", err)
	}
	g.Close()
}
