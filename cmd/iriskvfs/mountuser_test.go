package main

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// asNobody runs argv as uid/gid 65534 and returns its combined output and
// whether it succeeded.
func asNobody(t *testing.T, argv ...string) (string, bool) {
	t.Helper()
	cmd := exec.Command("setpriv", append([]string{"--reuid=65534", "--regid=65534", "--clear-groups", "--"}, argv...)...)
	cmd.Env = append(os.Environ(), "HOME=/tmp")
	out, err := cmd.CombinedOutput()
	return string(out), err == nil
}

// userSandbox makes a directory anyone may use, holding a copy of the CLI
// that anyone may run (the test's own may live in a private directory).
func userSandbox(t *testing.T) (dir, bin string) {
	t.Helper()
	for _, tool := range []string{"setpriv", "fusermount3"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("IRISKVFS_REQUIRE_FUSE") == "1" {
				t.Fatalf("%s is not installed", tool)
			}
			t.Skipf("%s is not installed", tool)
		}
	}
	dir, err := os.MkdirTemp("/tmp", "iriskvfs-user-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	src, err := os.Open(cliPath(t))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	bin = filepath.Join(dir, "iriskvfs")
	dst, err := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(dst, src); err != nil {
		t.Fatal(err)
	}
	dst.Close()
	return dir, bin
}

// TestMountAsUser: a user without root mounts through fusermount3, uses
// the mount, and unmounts; the mount belongs to that user.
func TestMountAsUser(t *testing.T) {
	requireFUSE(t)
	dir, bin := userSandbox(t)
	storeDir, point := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	t.Cleanup(func() { cleanupMount(t, point, storeDir) })
	out, ok := asNobody(t, bin, "--store", storeDir, "mount", "--daemon", point)
	if !ok || !strings.HasPrefix(out, "mounted "+point) {
		log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
		t.Fatalf("mount as nobody: %q\n%s", out, log)
	}
	if line := mountinfoLine(point); !strings.Contains(line, " - fuse.iriskvfs ") || !strings.Contains(line, "user_id=65534") {
		t.Fatalf("mountinfo: %q, want a fuse.iriskvfs mount of user 65534", line)
	}
	if out, ok := asNobody(t, "sh", "-c", "echo hello > "+point+"/task/k && cat "+point+"/task/k && stat -c %U "+point+"/task/k"); !ok || out != "hello\nnobody\n" {
		t.Fatalf("use as nobody: %q", out)
	}
	if out, ok := asNobody(t, bin, "--store", storeDir, "get", "task", "k"); !ok || out != "hello\n" {
		t.Fatalf("get through the socket as nobody: %q", out)
	}
	if out, ok := asNobody(t, bin, "unmount", point); !ok || !strings.HasPrefix(out, "unmounted") {
		t.Fatalf("unmount as nobody: %q", out)
	}
	if _, still := mountAt(point); still {
		t.Fatal("still mounted after unmount")
	}
}

// TestMountAllowOther: without --allow-other other users are kept out;
// with it they may use the mount, and default_permissions makes the kernel
// check modes (a root-owned 0644 file is readable, not writable).
func TestMountAllowOther(t *testing.T) {
	requireFUSE(t)
	dir, _ := userSandbox(t)
	for _, allow := range []bool{false, true} {
		storeDir := filepath.Join(dir, "store-"+map[bool]string{false: "private", true: "shared"}[allow])
		point := filepath.Join(dir, "mnt-"+map[bool]string{false: "private", true: "shared"}[allow])
		var flags []string
		if allow {
			flags = append(flags, "--allow-other")
		}
		mountDaemon(t, storeDir, point, flags...)
		if err := os.WriteFile(filepath.Join(point, "task", "k"), []byte("root's\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out, readOK := asNobody(t, "cat", filepath.Join(point, "task", "k"))
		_, writeOK := asNobody(t, "sh", "-c", "echo x > "+filepath.Join(point, "task", "k"))
		if !allow {
			if readOK || !strings.Contains(out, "Permission denied") {
				t.Errorf("without --allow-other, nobody read the mount: %q", out)
			}
			continue
		}
		if !readOK || out != "root's\n" {
			t.Errorf("with --allow-other, nobody cannot read a 0644 file: %q", out)
		}
		if writeOK {
			t.Error("with --allow-other, nobody wrote a root-owned 0644 file: default_permissions missing")
		}
		if line := mountinfoLine(point); !strings.Contains(line, "default_permissions") || !strings.Contains(line, "allow_other") {
			t.Errorf("mountinfo %q lacks allow_other,default_permissions", line)
		}
	}
}

// mountinfoLine is the /proc/self/mountinfo line of the mount at point.
func mountinfoLine(point string) string {
	b, _ := os.ReadFile("/proc/self/mountinfo")
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == point {
			return line
		}
	}
	return ""
}
