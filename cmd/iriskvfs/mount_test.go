package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/fs"
	"github.com/iriskvfs/iriskvfs/store"
)

// The mount tests run the real CLI (TestMain installs it on $PATH) and mount
// for real: they need root and /dev/fuse, and skip without them unless
// IRISKVFS_REQUIRE_FUSE=1. Every test unmounts what it mounted, and TestMain
// fails the run if an iriskvfs mount under the run's temporary directory is
// left behind.

const requireFUSEEnv = "IRISKVFS_REQUIRE_FUSE"

// fuseUnavailable says why mounts cannot be tested here, or "".
func fuseUnavailable() string {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return err.Error()
	}
	if os.Geteuid() != 0 {
		return "not root (the tests mount directly, without fusermount3)"
	}
	return ""
}

func requireFUSE(t testing.TB) {
	t.Helper()
	if why := fuseUnavailable(); why != "" {
		if os.Getenv(requireFUSEEnv) == "1" {
			t.Fatalf("cannot mount: %s (and %s=1)", why, requireFUSEEnv)
		}
		t.Skipf("cannot mount: %s (set %s=1 to fail instead)", why, requireFUSEEnv)
	}
}

// cliResult is what one run of the CLI did.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d, stdout %q, stderr %q", r.code, r.stdout, r.stderr)
}

// runCLI runs the CLI with args (stdin from in, if not nil) and returns what
// it did; it fails the test only if the CLI could not be run at all.
func runCLI(t *testing.T, in io.Reader, args ...string) cliResult {
	t.Helper()
	res, err := execCLI(cliPath(t), in, args...)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// execCLI runs the CLI at bin; it fails only if the CLI could not be run,
// or was killed (after a minute).
func execCLI(bin string, in io.Reader, args ...string) (cliResult, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Stdin = in
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	res := cliResult{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee) && ee.ExitCode() >= 0:
		res.code = ee.ExitCode()
	default:
		return res, fmt.Errorf("iriskvfs %s: %v (stderr %q)", strings.Join(args, " "), err, errb.String())
	}
	return res, nil
}

// mustCLI runs the CLI and requires exit 0 and nothing on stderr.
func mustCLI(t *testing.T, in io.Reader, args ...string) string {
	t.Helper()
	r := runCLI(t, in, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("iriskvfs %s: %s", strings.Join(args, " "), r)
	}
	return r.stdout
}

// wantErrLine requires exit code 1 and exactly one line "iriskvfs: …" on
// stderr matching pattern.
func wantErrLine(t testing.TB, r cliResult, pattern string, what string) {
	t.Helper()
	if r.code != 1 {
		t.Errorf("%s: %s, want exit 1", what, r)
		return
	}
	if strings.Count(r.stderr, "\n") != 1 || !strings.HasSuffix(r.stderr, "\n") || !strings.HasPrefix(r.stderr, "iriskvfs: ") {
		t.Errorf("%s: stderr is not one line \"iriskvfs: …\": %q", what, r.stderr)
		return
	}
	if !regexp.MustCompile(pattern).MatchString(strings.TrimSuffix(r.stderr, "\n")) {
		t.Errorf("%s: stderr %q does not match %q", what, r.stderr, pattern)
	}
}

// mountEntry is an iriskvfs line of /proc/self/mountinfo.
type mountEntry struct {
	point, source, options string
}

// iriskvfsMounts lists the iriskvfs mounts of this mount namespace.
func iriskvfsMounts() []mountEntry {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	unescape := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	var out []mountEntry
	for _, line := range strings.Split(string(b), "\n") {
		// id parent maj:min root point options [optional...] - type source superopts
		f := strings.Fields(line)
		i := slices.Index(f, "-")
		if i < 6 || i+2 >= len(f) || f[i+1] != fs.FSType {
			continue
		}
		out = append(out, mountEntry{point: unescape.Replace(f[4]), source: unescape.Replace(f[i+2]), options: f[5]})
	}
	return out
}

// mountAt returns the iriskvfs mount at point, if any (the top one).
func mountAt(point string) (mountEntry, bool) {
	var found mountEntry
	ok := false
	for _, m := range iriskvfsMounts() {
		if m.point == point {
			found, ok = m, true
		}
	}
	return found, ok
}

// isDead reports whether point is a mount whose server is gone. statfs,
// unlike stat, always asks the server; one that does not answer within 2 s
// is not dead but hung.
func isDead(point string) bool {
	res := make(chan error, 1)
	go func() {
		var st unix.Statfs_t
		res <- unix.Statfs(point, &st)
	}()
	select {
	case err := <-res:
		return errors.Is(err, unix.ENOTCONN)
	case <-time.After(2 * time.Second):
		return false
	}
}

// within reports whether path is root or below it.
func within(path, root string) bool {
	rel, err := filepath.Rel(root, path)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../")
}

// stopMount ends the mount at point over storeDir by any means: SIGTERM to
// the daemon holding the store (a process the tests started), then SIGKILL,
// then aborting the connection (a killed daemon may be unable to exit while
// the mount is in use) and a lazy unmount. It reports what it had to do.
func stopMount(point, storeDir string) string {
	how := "unmounted"
	if pid, held := store.LockHolder(storeDir); held && pid > 0 && pid != os.Getpid() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitFor(10*time.Second, func() bool {
			_, mounted := mountAt(point)
			_, locked := store.LockHolder(storeDir)
			return !mounted && !locked
		}) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
			how = "killed"
		}
	}
	if _, mounted := mountAt(point); mounted {
		how += ", connection aborted"
		_ = fs.AbortConnection(point) // unmounts it, or leaves it dead if busy
		if _, mounted := mountAt(point); mounted {
			if err := fs.LazyUnmount(point); err != nil {
				return how + ", and the lazy unmount failed: " + err.Error()
			}
			how += ", lazily detached"
		}
	}
	return how
}

// detachMounts stops every iriskvfs mount whose mount point is under root,
// and returns what it found.
func detachMounts(root string) []string {
	var found []string
	for _, m := range iriskvfsMounts() {
		if within(m.point, root) {
			found = append(found, m.point+" ("+stopMount(m.point, m.source)+")")
		}
	}
	return found
}

// leftoverCheck runs the tests with TMPDIR set to a directory of this run
// (t.TempDir and the scripts' $WORK live below it), then fails the run if
// an iriskvfs mount below it is still there, after detaching it.
type leftoverCheck struct{ m *testing.M }

func (l leftoverCheck) Run() int {
	root, err := os.MkdirTemp("", "iriskvfs-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "cannot create the test root:", err)
		return 1
	}
	if root, err = filepath.EvalSymlinks(root); err != nil {
		fmt.Fprintln(os.Stderr, "cannot resolve the test root:", err)
		return 1
	}
	oldTmp, hadTmp := os.LookupEnv("TMPDIR")
	os.Setenv("TMPDIR", root)
	code := l.m.Run()
	if left := detachMounts(root); len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: the tests left %d iriskvfs mount(s) behind:\n\t%s\n", len(left), strings.Join(left, "\n\t"))
		code = 1
	}
	if hadTmp {
		os.Setenv("TMPDIR", oldTmp)
	} else {
		os.Unsetenv("TMPDIR")
	}
	os.RemoveAll(root)
	return code
}

func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// processGone reports whether pid has exited (a zombie has).
func processGone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	if i := strings.LastIndexByte(s, ')'); i >= 0 && i+2 < len(s) {
		return s[i+2] == 'Z' || s[i+2] == 'X'
	}
	return false
}

// daemon is a `mount --daemon` the test started.
type daemon struct {
	store, point string
	pid          int
}

var mountedRe = regexp.MustCompile(`^mounted (.+) \(daemon pid (\d+), log (.+)\)\n$`)

// mountDaemon runs `mount --daemon` and requires it to succeed; the mount
// is stopped when the test ends.
func mountDaemon(t *testing.T, storeDir, point string, flags ...string) *daemon {
	t.Helper()
	args := append([]string{"--store", storeDir, "mount", "--daemon", point}, flags...)
	r := runCLI(t, nil, args...)
	t.Cleanup(func() { cleanupMount(t, point, storeDir) })
	if r.code != 0 || r.stderr != "" {
		log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
		t.Fatalf("mount --daemon: %s\ndaemon.log:\n%s", r, log)
	}
	m := mountedRe.FindStringSubmatch(r.stdout)
	if m == nil {
		t.Fatalf("mount --daemon printed %q, want \"mounted POINT (daemon pid N, log FILE)\"", r.stdout)
	}
	if m[1] != point || m[3] != filepath.Join(storeDir, "daemon.log") {
		t.Errorf("mount --daemon printed %q: want mount point %s and log %s", r.stdout, point, filepath.Join(storeDir, "daemon.log"))
	}
	pid, _ := strconv.Atoi(m[2])
	return &daemon{store: storeDir, point: point, pid: pid}
}

// cleanupMount stops the mount at point if a test left it, and fails the
// test if the daemon's log shows a data race or a panic.
func cleanupMount(t *testing.T, point, storeDir string) {
	t.Helper()
	if _, ok := mountAt(point); ok {
		stopMount(point, storeDir)
	} else if pid, held := store.LockHolder(storeDir); held && pid != os.Getpid() {
		// A daemon that lost its mount but still holds the store.
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitFor(5*time.Second, func() bool { _, held := store.LockHolder(storeDir); return !held }) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	checkDaemonLog(t, storeDir)
}

func checkDaemonLog(t *testing.T, storeDir string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
	if err != nil {
		return
	}
	for _, bad := range []string{"DATA RACE", "panic:", "goroutine "} {
		if bytes.Contains(b, []byte(bad)) {
			t.Errorf("the daemon's log has %q:\n%s", bad, b)
			return
		}
	}
}

var rootNames = []string{".stats", "artifacts", "instructions", "project", "system", "task"}

func readDirNames(dir string) ([]string, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	return names, nil
}

// TestMountDaemon: `mount --daemon` returns 0 only once the mount answers
// (right away, ls shows the scopes and .stats), the daemon has its own
// session and logs to STORE/daemon.log, /proc/self/mountinfo shows type
// fuse.iriskvfs with the store as source, the admin socket is 0600; a second
// daemon on the same store, or on the same mount point, fails with one
// line; `unmount` stops the daemon, removes the mount and frees the store
// at once. Several rounds on the same store and mount point, each unmount
// right after the mount returned.
func TestMountDaemon(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	mySid, err := unix.Getsid(0)
	if err != nil {
		t.Fatal(err)
	}
	const rounds = 6
	for round := 0; round < rounds; round++ {
		d := mountDaemon(t, storeDir, point)
		// It answers now: no waiting, no retry.
		names, err := readDirNames(point)
		if err != nil || !slices.Equal(names, rootNames) {
			t.Fatalf("round %d: right after mount --daemon, the mount lists %q (%v), want %q", round, names, err, rootNames)
		}
		if round == 0 {
			// The real tool, too.
			out, err := exec.Command("ls", "-A", point).CombinedOutput()
			if err != nil || !slices.Equal(strings.Fields(string(out)), rootNames) {
				t.Errorf("ls -A %s: %q (%v), want %q", point, out, err, rootNames)
			}
			sid, err := unix.Getsid(d.pid)
			if err != nil {
				t.Fatalf("getsid(%d): %v", d.pid, err)
			}
			if sid == mySid || sid != d.pid {
				t.Errorf("the daemon (pid %d) is in session %d, want its own session (the test's is %d)", d.pid, sid, mySid)
			}
			if pid, held := store.LockHolder(storeDir); !held || pid != d.pid {
				t.Errorf("the store's lock holder is %d (held %v), want the daemon %d", pid, held, d.pid)
			}
			m, ok := mountAt(point)
			if !ok {
				t.Fatalf("/proc/self/mountinfo has no %s mount at %s", fs.FSType, point)
			}
			if m.source != storeDir {
				t.Errorf("mountinfo source is %q, want the store %q", m.source, storeDir)
			}
			fi, err := os.Lstat(filepath.Join(storeDir, "admin.sock"))
			if err != nil {
				t.Fatalf("admin socket: %v", err)
			}
			if fi.Mode().Type() != os.ModeSocket || fi.Mode().Perm() != 0o600 {
				t.Errorf("admin.sock mode is %v, want srw-------", fi.Mode())
			}
			log, err := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
			if err != nil || !bytes.Contains(log, []byte("pid="+strconv.Itoa(d.pid))) {
				t.Errorf("daemon.log does not name the daemon's pid %d (%v):\n%s", d.pid, err, log)
			}

			// A second daemon on the same store: one line naming the holder.
			r := runCLI(t, nil, "--store", storeDir, "mount", "--daemon", filepath.Join(tmp, "mnt2"))
			wantErrLine(t, r, `store is in use by another process \(pid `+strconv.Itoa(d.pid)+`\)`, "mount --daemon on a held store")
			if r.stdout != "" {
				t.Errorf("failed mount printed %q on stdout", r.stdout)
			}
			if _, ok := mountAt(filepath.Join(tmp, "mnt2")); ok {
				t.Errorf("the failed mount left a mount at mnt2")
			}
			// Another store on the same mount point.
			r = runCLI(t, nil, "--store", filepath.Join(tmp, "store2"), "mount", "--daemon", point)
			wantErrLine(t, r, `already mounted`, "mount --daemon on a mount point in use")
			if names, err := readDirNames(point); err != nil || !slices.Equal(names, rootNames) {
				t.Errorf("after the failed mounts the first mount lists %q (%v)", names, err)
			}
		}

		if round%2 == 1 {
			// SIGTERM straight to the daemon, the moment mount returned:
			// a clean stop too.
			if err := syscall.Kill(d.pid, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			if !waitFor(10*time.Second, func() bool { return processGone(d.pid) }) {
				t.Fatalf("round %d: the daemon did not exit on SIGTERM", round)
			}
			if _, ok := mountAt(point); ok {
				log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
				t.Fatalf("round %d: the daemon exited on SIGTERM and left its mount (dead: %v)\ndaemon.log:\n%s", round, isDead(point), log)
			}
		} else {
			// unmount at once: the daemon stops, the mount goes, the store
			// is free as soon as unmount returns.
			r := runCLI(t, nil, "unmount", point)
			if r.code != 0 || r.stdout != "unmounted "+point+"\n" || r.stderr != "" {
				log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
				t.Fatalf("round %d: unmount: %s\ndaemon.log:\n%s", round, r, log)
			}
			if _, ok := mountAt(point); ok {
				t.Fatalf("round %d: the mount is still in mountinfo after unmount", round)
			}
			if pid, held := store.LockHolder(storeDir); held {
				t.Errorf("round %d: unmount returned while pid %d still holds the store", round, pid)
			}
			if _, err := os.Lstat(filepath.Join(storeDir, "admin.sock")); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("round %d: admin.sock is still there after unmount (%v)", round, err)
			}
			if r := runCLI(t, nil, "--store", storeDir, "ls"); r.code != 0 {
				t.Errorf("round %d: ls right after unmount: %s", round, r)
			}
		}
		if !waitFor(5*time.Second, func() bool { return processGone(d.pid) }) {
			t.Errorf("round %d: the daemon (pid %d) is still running after unmount", round, d.pid)
		}
		if t.Failed() {
			return
		}
	}
	log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
	if n := bytes.Count(log, []byte("msg=unmounted")); n != rounds {
		t.Errorf("daemon.log records %d clean unmounts, want %d:\n%s", n, rounds, log)
	}
}

// TestMountDaemonErrors: the daemon's own error comes back to the parent
// (exit 1, one line, the whole reason), and nothing stays mounted.
func TestMountDaemonErrors(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	point := filepath.Join(tmp, "mnt")
	write := func(name, content string) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, c := range []struct {
		name, config, want string
	}{
		// yaml puts the reason on a second line: it must survive the pipe.
		{"unknown-field", "scopes:\n  task: {quoat: 1MB}\n", `unknown-field\.yaml.*field quoat not found`},
		{"bad-size", "scopes:\n  task: {quota: lots}\n", `bad size "lots"`},
	} {
		cfg := write(c.name+".yaml", c.config)
		storeDir := filepath.Join(tmp, "store-"+c.name)
		r := runCLI(t, nil, "--store", storeDir, "--config", cfg, "mount", "--daemon", point)
		t.Cleanup(func() { cleanupMount(t, point, storeDir) })
		wantErrLine(t, r, `^iriskvfs: mount failed: .*`+c.want+`.*\(log: `+regexp.QuoteMeta(filepath.Join(storeDir, "daemon.log"))+`\)$`, "mount --daemon --config "+c.name)
		if _, ok := mountAt(point); ok {
			t.Errorf("%s: a failed mount left a mount behind", c.name)
		}
		// The child reports to the parent first, then prints its error.
		var log []byte
		if !waitFor(10*time.Second, func() bool {
			log, _ = os.ReadFile(filepath.Join(storeDir, "daemon.log"))
			return regexp.MustCompile(c.want).Match(log)
		}) {
			t.Errorf("%s: daemon.log does not have the error:\n%s", c.name, log)
		}
	}
	// A mount point that is a file.
	file := write("plainfile", "x")
	r := runCLI(t, nil, "--store", filepath.Join(tmp, "store-f"), "mount", "--daemon", file)
	wantErrLine(t, r, `not a directory`, "mount --daemon on a file")
	t.Cleanup(func() { cleanupMount(t, file, filepath.Join(tmp, "store-f")) })
	// The store is free again after each failure.
	if r := runCLI(t, nil, "--store", filepath.Join(tmp, "store-f"), "ls"); r.code != 0 {
		t.Errorf("ls after a failed mount: %s", r)
	}
}

// TestUnmountErrors: unmount of something that is not an iriskvfs mount
// fails with one line.
func TestUnmountErrors(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	plain := filepath.Join(tmp, "plain")
	if err := os.Mkdir(plain, 0o755); err != nil {
		t.Fatal(err)
	}
	wantErrLine(t, runCLI(t, nil, "unmount", plain), `^iriskvfs: `+regexp.QuoteMeta(plain)+` is not mounted$`, "unmount of a plain directory")
	wantErrLine(t, runCLI(t, nil, "unmount", filepath.Join(tmp, "nosuch")), `nosuch is not mounted$`, "unmount of a missing path")
	// Another filesystem is left alone.
	tm := filepath.Join(tmp, "tmpfs")
	if err := os.Mkdir(tm, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", tm, "tmpfs", 0, "size=1m"); err != nil {
		t.Logf("cannot mount a tmpfs (%v): skipping that case", err)
		return
	}
	t.Cleanup(func() { _ = unix.Unmount(tm, unix.MNT_DETACH) })
	wantErrLine(t, runCLI(t, nil, "unmount", tm), `is a tmpfs mount, not iriskvfs$`, "unmount of a tmpfs")
	var st unix.Statfs_t
	if err := unix.Statfs(tm, &st); err != nil || st.Type != unix.TMPFS_MAGIC {
		t.Errorf("the tmpfs is no longer mounted after a refused unmount (%v)", err)
	}
}

// TestMountForegroundSignals: a foreground mount stops on SIGTERM and on
// SIGINT: exit 0, the mount is gone, and what was written through it is in
// the store.
func TestMountForegroundSignals(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		cmd := exec.Command(cliPath(t), "--store", storeDir, "mount", point)
		var stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stderr, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		t.Cleanup(func() {
			cleanupMount(t, point, storeDir)
			_ = cmd.Process.Kill()
		})
		up := waitFor(20*time.Second, func() bool {
			if len(exited) > 0 {
				return true
			}
			if _, ok := mountAt(point); !ok {
				return false
			}
			names, err := readDirNames(point)
			return err == nil && slices.Equal(names, rootNames)
		})
		if len(exited) > 0 || !up {
			t.Fatalf("%v: the foreground mount did not come up (exited: %v):\n%s", sig, len(exited) > 0, stderr.String())
		}
		value := "written before " + sig.String() + "\n"
		if err := os.WriteFile(filepath.Join(point, "task", "k"), []byte(value), 0o644); err != nil {
			t.Fatalf("%v: write through the mount: %v", sig, err)
		}
		if err := cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("%v: the foreground mount exited with %v, want 0:\n%s", sig, err, stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("%v: the foreground mount did not exit:\n%s", sig, stderr.String())
		}
		if _, ok := mountAt(point); ok {
			t.Fatalf("%v: the mount is still there after the mount command exited", sig)
		}
		if !strings.Contains(stderr.String(), "msg=unmounted") {
			t.Errorf("%v: the log does not say it unmounted:\n%s", sig, stderr.String())
		}
		if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != value {
			t.Errorf("%v: after the mount stopped, task/k holds %q, want %q", sig, got, value)
		}
	}
}

// TestMountReadOnly: with --read-only every change through the mount fails
// with EROFS, and reads work.
func TestMountReadOnly(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	mustCLI(t, strings.NewReader("the value\n"), "--store", storeDir, "put", "task", "k")
	mountDaemon(t, storeDir, point, "--read-only")
	if m, _ := mountAt(point); !slices.Contains(strings.Split(m.options, ","), "ro") {
		t.Errorf("mount options %q, want ro", m.options)
	}
	k := filepath.Join(point, "task", "k")
	if b, err := os.ReadFile(k); err != nil || string(b) != "the value\n" {
		t.Fatalf("read through a read-only mount: %q, %v", b, err)
	}
	if out, err := exec.Command("cat", k).Output(); err != nil || string(out) != "the value\n" {
		t.Errorf("cat: %q, %v", out, err)
	}
	if _, err := os.ReadFile(filepath.Join(point, ".stats")); err != nil {
		t.Errorf("read .stats: %v", err)
	}
	if _, err := os.ReadFile(filepath.Join(point, "task", "_index.json")); err != nil {
		t.Errorf("read _index.json: %v", err)
	}
	erofs := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, syscall.EROFS) {
			t.Errorf("%s on a read-only mount: %v, want EROFS", what, err)
		}
	}
	erofs("overwrite", os.WriteFile(k, []byte("new"), 0o644))
	erofs("create", os.WriteFile(filepath.Join(point, "task", "new"), []byte("new"), 0o644))
	_, err := os.OpenFile(k, os.O_WRONLY|os.O_APPEND, 0)
	erofs("open for append", err)
	erofs("truncate", os.Truncate(k, 0))
	erofs("unlink", os.Remove(k))
	erofs("rename", os.Rename(k, filepath.Join(point, "task", "k2")))
	erofs("chmod", os.Chmod(k, 0o600))
	erofs("utimes", os.Chtimes(k, time.Now(), time.Now()))
	erofs("setxattr", unix.Setxattr(k, "user.iris.meta.x", []byte("y"), 0))
	erofs("mkdir", os.Mkdir(filepath.Join(point, "task", "d"), 0o755))
	out, err := exec.Command("sh", "-c", "echo x > "+k).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Read-only file system") {
		t.Errorf("sh -c 'echo x > k': %v, %q; want Read-only file system", err, out)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != "the value\n" {
		t.Errorf("after the refused writes task/k holds %q", got)
	}
	if names, _ := readDirNames(filepath.Join(point, "task")); slices.Contains(names, "new") || slices.Contains(names, "k2") {
		t.Errorf("the refused writes show in the scope: %q", names)
	}
}

// TestMountDeadMount: a daemon killed with SIGKILL leaves a dead mount
// ("transport endpoint is not connected"), even after the kernel cached the
// mount's root; `mount --daemon` clears it by itself, and so does
// `unmount`, which says so.
func TestMountDeadMount(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	kill := func(d *daemon) {
		t.Helper()
		// Make the kernel cache the root and a scope, as any user would.
		if _, err := os.Stat(point); err != nil {
			t.Fatal(err)
		}
		if _, err := readDirNames(filepath.Join(point, "task")); err != nil {
			t.Fatal(err)
		}
		if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		if !waitFor(10*time.Second, func() bool { return processGone(d.pid) && isDead(point) }) {
			t.Fatalf("after SIGKILL of the daemon the mount is not dead")
		}
		if _, err := os.ReadDir(point); !errors.Is(err, syscall.ENOTCONN) {
			t.Fatalf("readdir of the dead mount: %v, want ENOTCONN", err)
		}
	}
	d := mountDaemon(t, storeDir, point)
	mustCLI(t, strings.NewReader("v1\n"), "--store", storeDir, "put", "task", "k")
	kill(d)

	// mount clears it.
	d = mountDaemon(t, storeDir, point)
	if b, err := os.ReadFile(filepath.Join(point, "task", "k")); err != nil || string(b) != "v1\n" {
		t.Fatalf("after remounting over the dead mount task/k reads %q, %v", b, err)
	}
	if n := len(slices.DeleteFunc(iriskvfsMounts(), func(m mountEntry) bool { return m.point != point })); n != 1 {
		t.Errorf("%d mounts at %s after the remount, want 1 (the dead one detached)", n, point)
	}

	// unmount clears it, and says so.
	kill(d)
	r := runCLI(t, nil, "unmount", point)
	if r.code != 0 || r.stderr != "" || r.stdout != "cleared dead mount "+point+"\n" {
		t.Fatalf("unmount of a dead mount: %s, want exit 0 and \"cleared dead mount %s\"", r, point)
	}
	if _, ok := mountAt(point); ok {
		t.Fatalf("the dead mount is still there after unmount")
	}
	if fi, err := os.Stat(point); err != nil || !fi.IsDir() {
		t.Errorf("the mount point after clearing: %v", err)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k"); got != "v1\n" {
		t.Errorf("task/k holds %q after the kills", got)
	}
	if out := mustCLI(t, nil, "--store", storeDir, "fsck"); !strings.Contains(out, "clean") {
		t.Errorf("fsck after the kills: %q", out)
	}
}

// TestMountAdminVisibility: what the CLI writes through the admin socket
// shows through the mount at once (the kernel's cached name and size are
// invalidated), and what is written through the mount shows in the CLI.
func TestMountAdminVisibility(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	mountDaemon(t, storeDir, point)
	k := filepath.Join(point, "task", "k")
	size := func() int64 {
		t.Helper()
		fi, err := os.Stat(k)
		if err != nil {
			t.Fatalf("stat %s: %v", k, err)
		}
		return fi.Size()
	}
	// A missing key is looked up (and must not be cached as missing).
	if _, err := os.Stat(k); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("stat of a missing key: %v", err)
	}
	mustCLI(t, strings.NewReader("one\n"), "--store", storeDir, "put", "task", "k")
	if n := size(); n != 4 {
		t.Errorf("after put of 4 bytes, stat says %d", n)
	}
	// Open a reader on the old value: it keeps reading it.
	old, err := os.Open(k)
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	for i, v := range []string{"a longer second value\n", "3\n", strings.Repeat("x", 300<<10)} {
		mustCLI(t, strings.NewReader(v), "--store", storeDir, "put", "task", "k")
		if n := size(); n != int64(len(v)) {
			t.Errorf("put %d: stat says %d bytes right after the put, want %d", i, n, len(v))
		}
		if b, err := os.ReadFile(k); err != nil || string(b) != v {
			t.Errorf("put %d: the mount reads %d bytes (%v), want the new %d", i, len(b), err, len(v))
		}
		if out, err := exec.Command("stat", "-c", "%s", k).Output(); err != nil || strings.TrimSpace(string(out)) != strconv.Itoa(len(v)) {
			t.Errorf("put %d: stat(1) says %q (%v), want %d", i, out, err, len(v))
		}
	}
	if b, err := io.ReadAll(old); err != nil || string(b) != "one\n" {
		t.Errorf("a reader opened before the puts reads %q (%v), want the old value", b, err)
	}
	// rm and clear through the socket: gone from the mount at once.
	mustCLI(t, nil, "--store", storeDir, "rm", "task", "k")
	if _, err := os.Stat(k); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat after rm: %v, want ENOENT", err)
	}

	// Through the mount, then the CLI.
	out, err := exec.Command("sh", "-c", "echo x > "+filepath.Join(point, "task", "k2")).CombinedOutput()
	if err != nil {
		t.Fatalf("echo x > MNT/task/k2: %v %s", err, out)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k2"); got != "x\n" {
		t.Errorf("iriskvfs get task k2 = %q, want \"x\\n\"", got)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "ls", "task"); !regexp.MustCompile(`(?m)^k2 +2 `).MatchString(got) {
		t.Errorf("iriskvfs ls task = %q, want k2 with 2 bytes", got)
	}
	if err := os.WriteFile(filepath.Join(point, "task", "k2"), []byte("replaced\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k2"); got != "replaced\n" {
		t.Errorf("after rewriting through the mount, get = %q", got)
	}
	if err := os.Rename(filepath.Join(point, "task", "k2"), filepath.Join(point, "task", "k3")); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, nil, "--store", storeDir, "get", "task", "k2"); r.code != 1 {
		t.Errorf("get of a renamed-away key: %s", r)
	}
	if got := mustCLI(t, nil, "--store", storeDir, "get", "task", "k3"); got != "replaced\n" {
		t.Errorf("get of the renamed key = %q", got)
	}
	st := mustCLI(t, nil, "--store", storeDir, "stats", "--json")
	if !regexp.MustCompile(`"scope": "task",\s*"keys": 1,\s*"bytes": 9,`).MatchString(st) {
		t.Errorf("stats --json after the writes through the mount:\n%s", st)
	}
	out2 := mustCLI(t, nil, "--store", storeDir, "clear", "task")
	if out2 != "cleared 1 keys from task\n" {
		t.Errorf("clear: %q", out2)
	}
	if names, err := readDirNames(filepath.Join(point, "task")); err != nil || slices.Contains(names, "k3") {
		t.Errorf("after clear the scope lists %q (%v)", names, err)
	}
}

// TestMountAdminParity runs the same admin commands against two stores, one
// offline and one held by a mount daemon (started with the same --config),
// and requires the same exit codes, the same stdout and the same stderr
// line from each, but for timestamps, the store's path and the counters of
// reads (the daemon's accumulate; offline, every command starts afresh).
func TestMountAdminParity(t *testing.T) {
	requireFUSE(t)
	tmp := t.TempDir()
	file := func(name string, content []byte) string {
		p := filepath.Join(tmp, name)
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	cfg := file("policy.yaml", []byte("scopes:\n  project: {quota: 100B}\n  scratch: {quota: 1KB, ttl: 0}\n"))
	small := file("small.txt", []byte("small\n"))
	sixty := file("sixty.txt", bytes.Repeat([]byte("6"), 60))
	big := make([]byte, 3<<20+5)
	for i := range big {
		big[i] = byte(i * 7 / 5)
	}
	bigFile := file("big.bin", big)
	long := strings.Repeat("k", 256)
	type step struct {
		stdin string
		args  []string
	}
	s := func(args ...string) step { return step{args: args} }
	steps := []step{
		s("put", "task", "k", small),
		{"from stdin\n", []string{"put", "task", "k2", "-", "--ttl", "6h", "--meta", "a=b", "--meta", "c=d,e", "--content-type", "text/x-test"}},
		{"", []string{"put", "artifacts", "empty"}},
		s("put", "project", "p", small),
		s("put", "artifacts", "big", bigFile),
		s("put", "scratch", "s", small),
		s("get", "task", "k2"),
		s("get", "artifacts", "big"),
		s("ls"),
		s("ls", "--json"),
		s("ls", "scratch"),
		s("stats"),
		s("stats", "--json"),
		// quota and size limits
		s("put", "project", "p3", sixty),
		s("put", "project", "p4", sixty),
		s("put", "project", "p", bigFile),
		// bad keys and scopes, missing keys, bad metadata
		s("put", "task", "bad key", small),
		s("get", "task", ".stats"),
		s("put", "task", long, small),
		s("put", "nosuch", "k", small),
		s("clear", "nosuch"),
		s("get", "task", "missing"),
		s("rm", "task", "missing"),
		s("put", "task", "m", small, "--meta", "bad name=x"),
		// rm, prune, clear, fsck
		s("rm", "task", "k"),
		s("prune"),
		s("clear", "project"),
		s("fsck", "--json"),
		s("fsck", "--repair"),
		s("put", "task", "short", small, "--ttl", "300ms"),
	}
	later := []step{
		s("get", "task", "short"),
		s("prune"),
		s("stats", "--json"),
		s("fsck"),
	}
	offline, online := filepath.Join(tmp, "offline"), filepath.Join(tmp, "online")
	mountDaemon(t, online, filepath.Join(tmp, "mnt"), "--config", cfg)
	// The two sequences run side by side.
	bin := cliPath(t)
	run := func(storeDir string, res *[]cliResult, errp *error) {
		for i, st := range append(steps, later...) {
			if i == len(steps) {
				time.Sleep(400 * time.Millisecond) // task/short expires
			}
			var in io.Reader
			if st.stdin != "" || st.args[0] == "put" {
				in = strings.NewReader(st.stdin)
			}
			r, err := execCLI(bin, in, append([]string{"--store", storeDir, "--config", cfg}, st.args...)...)
			if err != nil {
				*errp = err
				return
			}
			*res = append(*res, r)
		}
	}
	var offRes, onRes []cliResult
	var offErr, onErr error
	done := make(chan bool)
	go func() { run(offline, &offRes, &offErr); done <- true }()
	run(online, &onRes, &onErr)
	<-done
	if offErr != nil || onErr != nil {
		t.Fatalf("offline: %v; through the daemon: %v", offErr, onErr)
	}
	steps = append(steps, later...)

	stamp := regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z`)
	// The counters of reads and refusals live in the process that counts.
	counters := regexp.MustCompile(`(?m)^hits \d+, misses \d+, verification failures \d+, quota rejections \d+$|"(hits|misses|verification_failures|quota_rejections|journal_commits|checkpoints|hot_entries|hot_bytes)": \d+`)
	norm := func(s, storeDir string) string {
		s = strings.ReplaceAll(s, storeDir, "STORE")
		s = stamp.ReplaceAllString(s, "TIME")
		return counters.ReplaceAllString(s, "COUNTERS")
	}
	codes := map[int]int{}
	for i, st := range steps {
		off, on := offRes[i], onRes[i]
		codes[off.code]++
		what := "iriskvfs " + strings.Join(st.args, " ")
		if len(what) > 80 {
			what = what[:80] + "…"
		}
		if off.code != on.code {
			t.Errorf("%s: exit %d offline, %d through the daemon (stderr %q / %q)", what, off.code, on.code, off.stderr, on.stderr)
		}
		if a, b := norm(off.stdout, offline), norm(on.stdout, online); a != b {
			if len(a) > 2000 || len(b) > 2000 {
				t.Errorf("%s: stdout differs: %d bytes offline, %d through the daemon", what, len(a), len(b))
			} else {
				t.Errorf("%s: stdout differs:\noffline: %q\ndaemon:  %q", what, a, b)
			}
		}
		if a, b := norm(off.stderr, offline), norm(on.stderr, online); a != b {
			t.Errorf("%s: stderr differs:\noffline: %q\ndaemon:  %q", what, a, b)
		}
		if off.code == 1 && (strings.Count(off.stderr, "\n") != 1 || !strings.HasPrefix(off.stderr, "iriskvfs: ")) {
			t.Errorf("%s: stderr is not one line: %q", what, off.stderr)
		}
	}
	if codes[0] != 23 || codes[1] != 11 {
		t.Errorf("exit codes %v: the steps did not do what they meant to", codes)
	}
	// The daemon served every one of them: it still holds the store.
	if _, held := store.LockHolder(online); !held {
		t.Errorf("the daemon no longer holds the store")
	}
}
