package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

// Storage faults, for real: a store on a tiny tmpfs that fills up, a store
// directory that goes read-only under the daemon, value files deleted or
// cut short, a damaged index file, a busy mount point at unmount.

// smallDisk mounts a tmpfs of size bytes at a new directory and unmounts it
// when the test ends (after the test's mounts on it are gone).
func smallDisk(t *testing.T, size string) string {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "disk")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return dir
}

// fill writes a file on dir's filesystem until it is full and returns it.
func fill(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "filler")
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			return p
		}
	}
}

// writeThrough writes data to path (O_TRUNC) in 64 KiB writes and closes
// it, returning the first error, of a write or of the close.
func writeThrough(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	var werr error
	for len(data) > 0 && werr == nil {
		n := min(len(data), 64<<10)
		_, werr = f.Write(data[:n])
		data = data[n:]
	}
	if cerr := f.Close(); werr == nil {
		werr = cerr
	}
	return werr
}

func wantErrnoOf(t *testing.T, what string, err error, want syscall.Errno) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Errorf("%s: %v, want %v (%s)", what, err, want, unix.ErrnoName(want))
	}
}

func readThrough(t *testing.T, path, want string) {
	t.Helper()
	if b, err := os.ReadFile(path); err != nil || string(b) != want {
		t.Errorf("read %s: %q (%v), want %q", path, b, err, want)
	}
}

// TestFaultNoSpace: the store on a 2 MB tmpfs. When the disk is full, a
// writer through the mount gets ENOSPC (a big value at its writes, a
// metadata change when the index cannot grow), the old value stays and
// reads go on being served; the CLI through the daemon and offline fails
// with one line; once space is freed, writes work again and fsck is clean.
func TestFaultNoSpace(t *testing.T) {
	requireFUSE(t)
	disk := smallDisk(t, "2m")
	storeDir, point := filepath.Join(disk, "store"), filepath.Join(t.TempDir(), "mnt")
	mountDaemon(t, storeDir, point)
	k, other := filepath.Join(point, "task", "k"), filepath.Join(point, "task", "other")
	if err := writeThrough(k, []byte("old value")); err != nil {
		t.Fatal(err)
	}
	if err := writeThrough(other, []byte("other value")); err != nil {
		t.Fatal(err)
	}

	// A value larger than the disk.
	wantErrnoOf(t, "writing 3 MB on a 2 MB disk", writeThrough(k, bytes.Repeat([]byte("z"), 3<<20)), syscall.ENOSPC)
	readThrough(t, k, "old value")
	// The disk full to the last block.
	filler := fill(t, disk)
	wantErrnoOf(t, "a 200 KB value on a full disk", writeThrough(k, bytes.Repeat([]byte("y"), 200<<10)), syscall.ENOSPC)
	wantErrnoOf(t, "a 60 KB xattr (the index must grow) on a full disk",
		unix.Setxattr(k, "user.iris.meta.big", bytes.Repeat([]byte("m"), 60<<10), 0), syscall.ENOSPC)
	readThrough(t, k, "old value")
	readThrough(t, other, "other value")
	if names, err := readDirNames(filepath.Join(point, "task")); err != nil || !slices.Equal(names, []string{"_index.json", "k", "other"}) {
		t.Errorf("ls task on a full disk: %q (%v)", names, err)
	}
	if _, err := os.ReadFile(filepath.Join(point, ".stats")); err != nil {
		t.Errorf(".stats on a full disk: %v", err)
	}
	wantErrLine(t, runCLI(t, bytes.NewReader(bytes.Repeat([]byte("c"), 100<<10)), "--store", storeDir, "put", "task", "cli"),
		`^iriskvfs: (write|put) task/cli: no space left on the backing store`, "put through the daemon on a full disk")
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != "old value" {
		t.Errorf("get through the daemon: %q", got)
	}

	// Space again: everything works.
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	big := bytes.Repeat([]byte("n"), 200<<10)
	if err := writeThrough(k, big); err != nil {
		t.Fatalf("write after space was freed: %v", err)
	}
	if b, _ := os.ReadFile(k); !bytes.Equal(b, big) {
		t.Errorf("task/k after the rewrite: %d bytes", len(b))
	}
	mustCLI(t, strings.NewReader("cli value"), "--store", storeDir, "put", "task", "cli")
	mustCLI(t, nil, "unmount", point)

	// Offline, the same.
	filler = fill(t, disk)
	wantErrLine(t, runCLI(t, bytes.NewReader(bytes.Repeat([]byte("c"), 100<<10)), "--store", storeDir, "put", "task", "cli"),
		`^iriskvfs: (write|put) task/cli: no space left on the backing store`, "put offline on a full disk")
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "cli"); got != "cli value" {
		t.Errorf("task/cli after the refused put: %q", got)
	}
	os.Remove(filler)
	mustCLI(t, strings.NewReader("newer"), "--store", storeDir, "put", "task", "cli")
	if out := mustCLI(t, nil, "--store", storeDir, "fsck"); !strings.Contains(out, "clean") {
		t.Errorf("fsck: %q", out)
	}
}

// roBind bind-mounts dir read-only over itself, the way a store sees its
// filesystem go read-only under it (a remount ro is refused while the
// daemon has files open for writing; a read-only bind is not), and undoes
// it when the test ends; undo does it sooner.
func roBind(t *testing.T, dir string) (undo func()) {
	t.Helper()
	if err := unix.Mount(dir, dir, "", unix.MS_BIND, ""); err != nil {
		t.Skipf("bind mount: %v", err)
	}
	done := false
	undo = func() {
		if !done {
			done = true
			// Detached: files the daemon opened through the bind keep it
			// busy; new opens reach the writable disk at once.
			if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
				t.Errorf("unmount the read-only bind: %v", err)
			}
		}
	}
	t.Cleanup(undo)
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Skipf("remount the bind read-only: %v", err)
	}
	return undo
}

// TestFaultReadOnlyStore: the store directory goes read-only under a
// running daemon. Writes through the mount and through the CLI fail with
// EROFS / one line saying so, reads go on, nothing is lost, and writes work
// again once the store is writable.
func TestFaultReadOnlyStore(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	d := mountDaemon(t, storeDir, point)
	k := filepath.Join(point, "task", "k")
	if err := writeThrough(k, []byte("old value")); err != nil {
		t.Fatal(err)
	}
	mustCLI(t, strings.NewReader("big"), "--store", storeDir, "put", "project", "p")

	undo := roBind(t, storeDir)
	wantErrnoOf(t, "overwrite with the store read-only", writeThrough(k, []byte("new value")), syscall.EROFS)
	wantErrnoOf(t, "create with the store read-only", writeThrough(filepath.Join(point, "task", "n"), []byte("v")), syscall.EROFS)
	out, err := exec.Command("bash", "-c", "echo x >> "+k).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Read-only file system") {
		t.Errorf("bash: echo >> k: %v %q, want Read-only file system", err, out)
	}
	wantErrLine(t, runCLI(t, strings.NewReader("v"), "--store", storeDir, "put", "task", "cli"),
		`^iriskvfs: (write|put) task/cli: the backing store is read-only`, "put through the daemon, store read-only")
	readThrough(t, k, "old value")
	readThrough(t, filepath.Join(point, "project", "p"), "big")
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != "old value" {
		t.Errorf("get: %q", got)
	}
	if out := mustCLI(t, nil, "--store", storeDir, "ls"); !strings.Contains(out, "task/k") || strings.Contains(out, "task/n") {
		t.Errorf("ls: %q", out)
	}
	undo()

	if err := writeThrough(k, []byte("new value")); err != nil {
		t.Fatalf("write once writable again: %v", err)
	}
	readThrough(t, k, "new value")
	readThrough(t, filepath.Join(point, "project", "p"), "big")
	if processGone(d.pid) {
		t.Fatal("the daemon died")
	}
	mustCLI(t, nil, "unmount", point)
	if out := mustCLI(t, nil, "--store", storeDir, "fsck"); !strings.Contains(out, "2 entries") {
		t.Errorf("fsck: %q", out)
	}
}

// blobOf is the value file of a key, found through the mount.
func blobOf(t *testing.T, storeDir, file string) string {
	t.Helper()
	buf := make([]byte, 128)
	n, err := unix.Getxattr(file, "user.iris.fingerprint", buf)
	if err != nil {
		t.Fatal(err)
	}
	fp := string(buf[:n])
	return filepath.Join(storeDir, "blobs", fp[:2], fp)
}

// TestFaultValueFileGone: a value file deleted, another cut short, under a
// running daemon. Opening either fails with EIO, logged with scope and key
// and counted in .stats; other keys read on; fsck lists both and exits 1;
// fsck --repair drops them (quarantining the one still there) and the
// store is clean.
func TestFaultValueFileGone(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	mountDaemon(t, storeDir, point)
	del, cut, fine := filepath.Join(point, "task", "deleted"), filepath.Join(point, "task", "cut"), filepath.Join(point, "task", "fine")
	for p, v := range map[string][]byte{del: []byte("to be deleted"), cut: bytes.Repeat([]byte("c"), 2<<20), fine: []byte("fine")} {
		if err := writeThrough(p, v); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(blobOf(t, storeDir, del)); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(blobOf(t, storeDir, cut), 1000); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{del, cut} {
		_, err := os.ReadFile(p)
		wantErrnoOf(t, "read "+p, err, syscall.EIO)
	}
	readThrough(t, fine, "fine")
	var st struct {
		VerifyFailures int64 `json:"verification_failures"`
	}
	if b, err := os.ReadFile(filepath.Join(point, ".stats")); err != nil || json.Unmarshal(b, &st) != nil || st.VerifyFailures < 2 {
		t.Errorf(".stats verification_failures = %d (%v)", st.VerifyFailures, err)
	}
	log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
	for _, key := range []string{"deleted", "cut"} {
		if !regexp.MustCompile(`integrity failure.*scope=task key=` + key).Match(log) {
			t.Errorf("daemon.log has no integrity failure for task/%s:\n%s", key, log)
		}
	}

	r := runCLI(t, nil, "--store", storeDir, "fsck")
	if r.code != 1 || !strings.Contains(r.stdout, "missing-blob: task/deleted") || !strings.Contains(r.stdout, "size-mismatch: task/cut") {
		t.Errorf("fsck: %s", r)
	}
	out := mustCLI(t, nil, "--store", storeDir, "fsck", "--repair")
	for _, want := range []string{"dropped task/deleted (missing-blob)", "dropped task/cut (size-mismatch)", "quarantined "} {
		if !strings.Contains(out, want) {
			t.Errorf("fsck --repair does not say %q:\n%s", want, out)
		}
	}
	if q, _ := filepath.Glob(filepath.Join(storeDir, "quarantine", "*")); len(q) != 1 {
		t.Errorf("quarantine holds %q, want the cut value file", q)
	}
	if names, _ := readDirNames(filepath.Join(point, "task")); !slices.Equal(names, []string{"_index.json", "fine"}) {
		t.Errorf("task lists %q after the repair", names)
	}
	if out := mustCLI(t, nil, "--store", storeDir, "fsck"); !strings.Contains(out, "clean") {
		t.Errorf("fsck after the repair: %q", out)
	}
}

// TestFaultDamagedIndex: index.db cut short (and, in a second store,
// overwritten at the start). `mount --daemon` and every command refuse with
// one line naming the file and `iriskvfs fsck --repair`; fsck --repair
// moves the file aside, salvages what it can, gives every other value its
// name back from its value file, and the store mounts and checks clean with
// every key.
func TestFaultDamagedIndex(t *testing.T) {
	requireFUSE(t)
	for _, c := range []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"truncated", func(b []byte) []byte { return b[:len(b)/2] }},
		{"overwritten", func(b []byte) []byte {
			for i := 0; i < 3*4096 && i < len(b); i++ {
				b[i] = 0xa5
			}
			return b
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
			want := map[string]string{}
			s, err := store.Open(storeDir, store.Options{})
			if err != nil {
				t.Fatal(err)
			}
			for i := 0; i < 200; i++ {
				k, v := fmt.Sprintf("k%03d", i), fmt.Sprintf("value %d", i)
				if _, err := s.Put("task", k, strings.NewReader(v), store.PutOptions{}); err != nil {
					t.Fatal(err)
				}
				want["task/"+k] = v
			}
			if _, err := s.Put("project", "notes.md", strings.NewReader("# notes"), store.PutOptions{}); err != nil {
				t.Fatal(err)
			}
			want["project/notes.md"] = "# notes"
			s.Close()
			idx := filepath.Join(storeDir, "index.db")
			b, err := os.ReadFile(idx)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(idx, c.damage(b), 0o600); err != nil {
				t.Fatal(err)
			}

			line := `^iriskvfs: .*index ` + regexp.QuoteMeta(idx) + ` is damaged \(.*\): run 'iriskvfs fsck --repair' to rebuild it`
			r := runCLI(t, nil, "--store", storeDir, "mount", "--daemon", point)
			t.Cleanup(func() { cleanupMount(t, point, storeDir) })
			wantErrLine(t, r, `^iriskvfs: mount failed: .*index `+regexp.QuoteMeta(idx)+` is damaged`, "mount --daemon")
			if _, ok := mountAt(point); ok {
				t.Error("a mount is left after the refusal")
			}
			for _, args := range [][]string{{"ls"}, {"get", "task", "k000"}, {"put", "task", "x", "/dev/null"}, {"stats"}, {"fsck"}} {
				wantErrLine(t, runCLI(t, nil, append([]string{"--store", storeDir}, args...)...), line, strings.Join(args, " "))
			}

			out := mustCLI(t, nil, "--store", storeDir, "fsck", "--repair")
			for _, w := range []string{"index-damaged: " + idx, "repaired: moved the damaged index to " + idx + ".corrupt-", "repaired: salvaged "} {
				if !strings.Contains(out, w) {
					t.Errorf("fsck --repair does not say %q:\n%s", w, out)
				}
			}
			if strings.Contains(out, "lost:") {
				t.Errorf("fsck --repair lost keys:\n%s", out)
			}
			mountDaemon(t, storeDir, point)
			for name, v := range want {
				readThrough(t, filepath.Join(point, name), v)
			}
			if out := mustCLI(t, nil, "--store", storeDir, "fsck"); !strings.Contains(out, fmt.Sprintf("%d entries", len(want))) || !strings.Contains(out, "clean") {
				t.Errorf("fsck after the rebuild: %q", out)
			}
			mustCLI(t, nil, "unmount", point)
		})
	}
}

// TestUnmountBusy: unmount of a mount that a process uses (its working
// directory, then an open file) fails at once with one line saying so, and
// the daemon keeps serving; --lazy detaches it, and the daemon exits when
// the last user lets go.
func TestUnmountBusy(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	d := mountDaemon(t, storeDir, point)
	if err := writeThrough(filepath.Join(point, "task", "k"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	sleeper := func(dir string, args ...string) *exec.Cmd {
		cmd := exec.Command("sleep", "30")
		if len(args) > 0 {
			cmd = exec.Command("sh", "-c", args[0])
		}
		cmd.Dir = dir
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		return cmd
	}

	user := sleeper(filepath.Join(point, "task"))
	start := time.Now()
	wantErrLine(t, runCLI(t, nil, "unmount", point), `^iriskvfs: cannot unmount `+regexp.QuoteMeta(point)+`: it is busy .*--lazy`, "unmount with a process in the mount")
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("the refusal took %v", el)
	}
	readThrough(t, filepath.Join(point, "task", "k"), "v")
	user.Process.Kill()
	user.Wait()

	user = sleeper(tmp, "exec 3<"+filepath.Join(point, "task", "k")+"; exec sleep 30")
	waitFor(5*time.Second, func() bool {
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", user.Process.Pid))
		return len(fds) >= 4
	})
	wantErrLine(t, runCLI(t, nil, "unmount", point), `it is busy`, "unmount with a file open in the mount")
	if processGone(d.pid) {
		t.Fatal("the daemon exited")
	}
	readThrough(t, filepath.Join(point, "task", "k"), "v")

	r := runCLI(t, nil, "unmount", "--lazy", point)
	if r.code != 0 || !strings.Contains(r.stdout, "detached "+point+" lazily") {
		t.Fatalf("unmount --lazy: %s", r)
	}
	if _, ok := mountAt(point); ok {
		t.Error("still mounted after unmount --lazy")
	}
	if processGone(d.pid) {
		t.Error("the daemon exited while a file was still open on its mount")
	}
	user.Process.Kill()
	user.Wait()
	if !waitFor(10*time.Second, func() bool { return processGone(d.pid) }) {
		t.Error("the daemon did not exit after the last user let go")
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != "v" {
		t.Errorf("task/k after the lazy unmount: %q", got)
	}
}

// TestFaultIndexDamagedUnderDaemon: damage deep in the index, where the
// open's checks do not look (leaf pages of the task bucket). The daemon
// starts, its background check logs the damage and skips the orphan sweep;
// a key on a damaged page fails with EIO while the others read on; fsck
// through the daemon says the index is damaged and to unmount first; after
// unmount, fsck --repair brings every key back.
func TestFaultIndexDamagedUnderDaemon(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	s, err := store.Open(storeDir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 400; i++ {
		if _, err := s.Put("task", fmt.Sprintf("k%04d", i), strings.NewReader(fmt.Sprint("value ", i)), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	idx := filepath.Join(storeDir, "index.db")
	b, err := os.ReadFile(idx)
	if err != nil {
		t.Fatal(err)
	}
	// Every leaf page holding task/k0200 (the live one and stale copies).
	n := 0
	for p := 2; p < len(b)/4096; p++ {
		pg := b[p*4096 : (p+1)*4096]
		if pg[8] == 0x02 && pg[9] == 0 && bytes.Contains(pg, []byte("k0200")) && !bytes.Contains(pg, []byte("task\x00k0200")) {
			for i := range pg {
				pg[i] = 0xee
			}
			n++
		}
	}
	if n == 0 {
		t.Fatal("no leaf page holds task/k0200")
	}
	if err := os.WriteFile(idx, b, 0o600); err != nil {
		t.Fatal(err)
	}

	d := mountDaemon(t, storeDir, point)
	if !waitFor(10*time.Second, func() bool {
		log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
		return bytes.Contains(log, []byte("orphan sweep skipped"))
	}) {
		log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
		t.Errorf("daemon.log does not report the damage:\n%s", log)
	}
	_, err = os.ReadFile(filepath.Join(point, "task", "k0200"))
	wantErrnoOf(t, "read a key on a damaged page", err, syscall.EIO)
	readThrough(t, filepath.Join(point, "task", "k0000"), "value 0")
	readThrough(t, filepath.Join(point, "task", "k0399"), "value 399")
	wantErrLine(t, runCLI(t, nil, "--store", storeDir, "fsck", "--repair"),
		`^iriskvfs: .*index `+regexp.QuoteMeta(idx)+` is damaged .*\(the daemon has it open: unmount first\)$`, "fsck --repair through the daemon")
	if processGone(d.pid) {
		t.Fatal("the daemon died")
	}
	mustCLI(t, nil, "unmount", point)
	out := mustCLI(t, nil, "--store", storeDir, "fsck", "--repair")
	if strings.Contains(out, "lost:") || !strings.Contains(out, "adopted task/k0200") {
		t.Errorf("fsck --repair:\n%s", out)
	}
	for i := 0; i < 400; i += 57 {
		if got := mustCLI(t, nil, "--store", storeDir, "get", "task", fmt.Sprintf("k%04d", i)); got != fmt.Sprint("value ", i) {
			t.Errorf("task/k%04d after the repair: %q", i, got)
		}
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k0200"); got != "value 200" {
		t.Errorf("task/k0200 after the repair: %q", got)
	}
}
