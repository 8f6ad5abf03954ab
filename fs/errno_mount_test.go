package fs

import (
	"bytes"
	"os"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

// TestErrnoKeyRules: names that cannot be keys fail to be created with
// EINVAL, a name past 255 bytes with ENAMETOOLONG.
func TestErrnoKeyRules(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	for _, name := range []string{".hidden", "_private", "-dash-first", "a b", "a:b", "caf\u00e9", "a*b", "tab\there", "a\\b", "x?"} {
		err := os.WriteFile(tm.path("task", name), []byte("v"), 0o644)
		wantErrno(t, "create "+name, err, syscall.EINVAL)
		if _, err := tm.store.Lookup("task", name); err == nil {
			t.Errorf("%q exists in the store", name)
		}
	}
	// Through the shell, the message is the errno's.
	if _, err := runErr("sh", "-c", "echo x > "+tm.path("task", ".dot")); err == nil || !strings.Contains(err.Error(), "Invalid argument") {
		t.Errorf("sh: echo > .dot: %v, want Invalid argument", err)
	}
	long := strings.Repeat("k", 256)
	err := os.WriteFile(tm.path("task", long), []byte("v"), 0o644)
	wantErrno(t, "create a 256-byte name", err, syscall.ENAMETOOLONG)
	// 255 bytes is fine; the allowed punctuation too.
	for _, name := range []string{strings.Repeat("k", 255), "a.b_c-d", "0", "A.", "x..y"} {
		writeFile(t, tm.path("task", name), []byte("v"))
		tm.wantValue(t, "task", name, []byte("v"))
	}
	// Renaming to a bad name: EINVAL / ENAMETOOLONG.
	err = os.Rename(tm.path("task", "0"), tm.path("task", "_zero"))
	wantErrno(t, "rename to _zero", err, syscall.EINVAL)
	err = os.Rename(tm.path("task", "0"), tm.path("task", long))
	wantErrno(t, "rename to a 256-byte name", err, syscall.ENAMETOOLONG)
}

// TestErrnoNotRegularFiles: mkdir, symlink, link and mknod: EPERM, at the
// root and in a scope; the root takes no files; scopes are fixed.
func TestErrnoNotRegularFiles(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	writeFile(t, tm.path("task", "target"), []byte("v"))
	for _, dir := range []string{tm.dir, tm.path("task")} {
		wantErrno(t, "mkdir in "+dir, os.Mkdir(dir+"/d", 0o755), syscall.EPERM)
		wantErrno(t, "symlink in "+dir, os.Symlink("target", dir+"/l"), syscall.EPERM)
		wantErrno(t, "link in "+dir, os.Link(tm.path("task", "target"), dir+"/h"), syscall.EPERM)
		wantErrno(t, "mknod fifo in "+dir, syscall.Mknod(dir+"/f", syscall.S_IFIFO|0o644, 0), syscall.EPERM)
		wantErrno(t, "mknod reg in "+dir, syscall.Mknod(dir+"/r", syscall.S_IFREG|0o644, 0), syscall.EPERM)
	}
	if _, err := runErr("mkdir", tm.path("task", "d")); err == nil || !strings.Contains(err.Error(), "Operation not permitted") {
		t.Errorf("mkdir tool: %v", err)
	}
	if _, err := runErr("ln", "-s", "x", tm.path("task", "s")); err == nil || !strings.Contains(err.Error(), "Operation not permitted") {
		t.Errorf("ln -s tool: %v", err)
	}
	// The root: no files, no removing or renaming scopes.
	wantErrno(t, "create at the root", os.WriteFile(tm.path("file"), []byte("v"), 0o644), syscall.EPERM)
	wantErrno(t, "rmdir a scope", syscall.Rmdir(tm.path("task")), syscall.EPERM)
	wantErrno(t, "rename a scope", os.Rename(tm.path("task"), tm.path("task2")), syscall.EPERM)
	wantErrno(t, "rename a key to the root", os.Rename(tm.path("task", "target"), tm.path("target")), syscall.EPERM)
	tm.wantValue(t, "task", "target", []byte("v"))
	if got := listDir(t, tm.path("task")); len(got) != 2 {
		t.Errorf("task lists %q after the refusals", got)
	}
}

// TestErrnoVirtualFiles: writing, truncating, removing or renaming .stats or
// _index.json: EPERM.
func TestErrnoVirtualFiles(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	writeFile(t, tm.path("task", "k"), []byte("v"))
	for _, p := range []string{tm.path(".stats"), tm.path("task", "_index.json")} {
		_, err := os.OpenFile(p, os.O_WRONLY, 0)
		wantErrno(t, "open for writing "+p, err, syscall.EPERM)
		_, err = os.OpenFile(p, os.O_RDWR, 0)
		wantErrno(t, "open read-write "+p, err, syscall.EPERM)
		_, err = os.OpenFile(p, os.O_WRONLY|os.O_TRUNC|os.O_CREATE, 0o644)
		wantErrno(t, "O_CREAT|O_TRUNC "+p, err, syscall.EPERM)
		wantErrno(t, "truncate "+p, syscall.Truncate(p, 0), syscall.EPERM)
		wantErrno(t, "unlink "+p, syscall.Unlink(p), syscall.EPERM)
		wantErrno(t, "chmod "+p, os.Chmod(p, 0o666), syscall.EPERM)
		if _, err := runErr("sh", "-c", "echo x > "+p); err == nil || !strings.Contains(err.Error(), "Operation not permitted") {
			t.Errorf("echo > %s: %v", p, err)
		}
		if _, err := runErr("rm", "-f", p); err == nil {
			t.Errorf("rm -f %s succeeded", p)
		}
		if fi, err := os.Stat(p); err != nil || fi.Size() == 0 {
			t.Errorf("%s after the refusals: %v", p, err)
		}
	}
	wantErrno(t, "rename _index.json", os.Rename(tm.path("task", "_index.json"), tm.path("task", "idx")), syscall.EPERM)
	wantErrno(t, "rename over _index.json", os.Rename(tm.path("task", "k"), tm.path("task", "_index.json")), syscall.EPERM)
	wantErrno(t, "rename .stats", os.Rename(tm.path(".stats"), tm.path("stats")), syscall.EPERM)
	wantErrno(t, "rename into .stats", os.Rename(tm.path("task", "k"), tm.path(".stats")), syscall.EPERM)
	tm.wantValue(t, "task", "k", []byte("v"))
}

const quotaConfig = "scopes:\n  task: {quota: 64KB}\n"

// TestErrnoQuota: with a 64 KB quota on task, a write that would exceed it
// fails as the data arrives with EDQUOT, the old value staying intact; a
// value larger than the whole quota fails with EFBIG.
func TestErrnoQuota(t *testing.T) {
	tm := mountStore(t, mountOptions{config: quotaConfig})
	a, b := pattern(40<<10, 1), pattern(20<<10, 2)
	tm.put("task", "a", a, store.PutOptions{})
	tm.put("task", "b", b, store.PutOptions{})

	t.Run("EDQUOT on write, old value intact", func(t *testing.T) {
		f, err := os.OpenFile(tm.path("task", "b"), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		// 10 KB fits (b's 20 KB are being replaced, 4 KB are free).
		if _, err := f.Write(pattern(10<<10, 3)); err != nil {
			t.Fatalf("a write within the quota: %v", err)
		}
		// 20 KB more would make b 30 KB: 70 KB in the scope.
		_, err = f.Write(pattern(20<<10, 4))
		wantErrno(t, "write past the quota", err, syscall.EDQUOT)
		// The close reports it too, and publishes nothing.
		wantErrno(t, "close after EDQUOT", f.Close(), syscall.EDQUOT)
		tm.wantValue(t, "task", "b", b)
		tm.wantValue(t, "task", "a", a)
	})

	t.Run("EDQUOT for a new key", func(t *testing.T) {
		f, err := os.Create(tm.path("task", "c"))
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write(pattern(8<<10, 5))
		wantErrno(t, "write past the quota", err, syscall.EDQUOT)
		wantErrno(t, "close after EDQUOT", f.Close(), syscall.EDQUOT)
		tm.wantGoneSoon(t, "task", "c")
		// The shell sees "Disk quota exceeded".
		_, err = runErr("sh", "-c", "head -c 10000 /dev/zero > "+tm.path("task", "d"))
		if err == nil || !strings.Contains(err.Error(), "quota exceeded") {
			t.Errorf("sh: head > d: %v, want Disk quota exceeded", err)
		}
		tm.wantValue(t, "task", "a", a)
		tm.wantValue(t, "task", "b", b)
	})

	t.Run("EFBIG for a value larger than the quota", func(t *testing.T) {
		f, err := os.OpenFile(tm.path("task", "a"), os.O_WRONLY|os.O_TRUNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.Write(pattern(65<<10, 6))
		wantErrno(t, "a single 65 KB write", err, syscall.EFBIG)
		f.Close()
		tm.wantValue(t, "task", "a", a)

		f, err = os.OpenFile(tm.path("task", "a"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		wantErrno(t, "ftruncate past the quota", f.Truncate(100<<10), syscall.EFBIG)
		f.Close()
		tm.wantValue(t, "task", "a", a)

		wantErrno(t, "truncate(2) past the quota", syscall.Truncate(tm.path("task", "a"), 100<<10), syscall.EFBIG)
		tm.wantValue(t, "task", "a", a)
	})

	t.Run("EDQUOT at close", func(t *testing.T) {
		// Each writer fits alone; together they do not. The second close
		// fails and publishes nothing.
		if err := tm.store.Delete("task", "a"); err != nil {
			t.Fatal(err)
		}
		x, err := os.Create(tm.path("task", "x"))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.Create(tm.path("task", "y"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := x.Write(pattern(30<<10, 7)); err != nil {
			t.Fatal(err)
		}
		if _, err := y.Write(pattern(30<<10, 8)); err != nil {
			t.Fatal(err)
		}
		if err := x.Close(); err != nil {
			t.Fatalf("first close: %v", err)
		}
		wantErrno(t, "second close", y.Close(), syscall.EDQUOT)
		tm.wantGoneSoon(t, "task", "y")
		tm.wantValue(t, "task", "b", b)
	})

	// Other scopes are not limited by task's quota.
	writeFile(t, tm.path("project", "big"), pattern(200<<10, 9))
}

// TestErrnoNoSpace: a full backing disk gives ENOSPC and leaves the old value.
func TestErrnoNoSpace(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=2m"); err != nil {
		t.Skipf("cannot mount a small tmpfs for the store: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount tmpfs: %v", err)
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	tm := mountStore(t, mountOptions{storeDir: dir + "/store"})
	old := []byte("old value")
	writeFile(t, tm.path("task", "k"), old)
	f, err := os.OpenFile(tm.path("task", "k"), os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	var werr error
	chunk := bytes.Repeat([]byte("z"), 256<<10)
	for i := 0; i < 16 && werr == nil; i++ {
		_, werr = f.Write(chunk)
	}
	cerr := f.Close()
	if werr == nil {
		werr = cerr
	}
	wantErrno(t, "writing 4 MB on a 2 MB disk", werr, syscall.ENOSPC)
	tm.wantValue(t, "task", "k", old)
}

// TestReadOnlyMount: a read-only mount reads and refuses every change.
func TestReadOnlyMount(t *testing.T) {
	tm := mountStore(t, mountOptions{fs: Options{ReadOnly: true}})
	tm.put("task", "k", []byte("v"), store.PutOptions{})
	tm.wantValue(t, "task", "k", []byte("v"))
	wantErrno(t, "create", os.WriteFile(tm.path("task", "n"), []byte("v"), 0o644), syscall.EROFS)
	_, err := os.OpenFile(tm.path("task", "k"), os.O_WRONLY, 0)
	wantErrno(t, "open for writing", err, syscall.EROFS)
	wantErrno(t, "unlink", os.Remove(tm.path("task", "k")), syscall.EROFS)
	wantErrno(t, "setxattr", unix.Setxattr(tm.path("task", "k"), "user.iris.meta.x", []byte("1"), 0), syscall.EROFS)
	tm.wantValue(t, "task", "k", []byte("v"))
}
