package fs

// Integration tests: they mount a fresh store for real (root + /dev/fuse,
// go-fuse DirectMount) inside `go test` and check the contract of DESIGN.md
// "The mount" with plain system calls and the real tools.
//
// Without root or /dev/fuse the mount tests skip, unless
// IRISKVFS_REQUIRE_FUSE=1, which makes them fail instead (CI sets it).

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// mounted records every mount point the tests created, so TestMain can fail
// the run if one is left behind.
var mounted struct {
	sync.Mutex
	points []string
}

func TestMain(m *testing.M) {
	code := m.Run()
	mounted.Lock()
	points := append([]string(nil), mounted.points...)
	mounted.Unlock()
	var left []string
	for _, p := range points {
		if mi, ok := FindMount(p); ok && mi.Type == FSType {
			left = append(left, p)
		}
	}
	if len(left) > 0 {
		fmt.Fprintf(os.Stderr, "FAIL: %d fuse.iriskvfs mount(s) left behind by the tests: %s\n", len(left), strings.Join(left, ", "))
		for _, p := range left {
			_ = LazyUnmount(p) // don't leave the machine dirty either
		}
		code = 1
	}
	os.Exit(code)
}

// requireFUSE skips (or, with IRISKVFS_REQUIRE_FUSE=1, fails) a test that
// needs to mount.
func requireFUSE(t testing.TB) {
	t.Helper()
	why := ""
	if os.Geteuid() != 0 {
		why = "not root"
	} else if _, err := os.Stat("/dev/fuse"); err != nil {
		why = "/dev/fuse missing: " + err.Error()
	}
	if why == "" {
		return
	}
	if os.Getenv("IRISKVFS_REQUIRE_FUSE") == "1" {
		t.Fatalf("cannot mount (%s) but IRISKVFS_REQUIRE_FUSE=1", why)
	}
	t.Skipf("cannot mount: %s (set IRISKVFS_REQUIRE_FUSE=1 to fail instead)", why)
}

// fakeClock is an injectable store clock.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Now()} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// mountOptions configure mountStore.
type mountOptions struct {
	config   string // quota YAML (quota.Parse); "" for the seed's policy
	storeDir string // "" for a fresh t.TempDir()
	clock    *fakeClock
	store    store.Options // Policy and Now are filled from config and clock
	fs       Options       // UID/GID default to ours
	// wrapRaw wraps the raw filesystem (see opCounter).
	wrapRaw func(fuse.RawFileSystem) fuse.RawFileSystem
}

// testMount is a store mounted for one test.
type testMount struct {
	t     testing.TB
	dir   string // the mount point
	store *store.Store
	m     *Mount
}

// path joins elements under the mount point.
func (tm *testMount) path(elem ...string) string {
	return filepath.Join(append([]string{tm.dir}, elem...)...)
}

// mountStore opens a fresh store in a temp dir and mounts it at another; the
// test's cleanup unmounts and closes the store.
func mountStore(t testing.TB, o mountOptions) *testMount {
	t.Helper()
	requireFUSE(t)
	storeDir, point := o.storeDir, t.TempDir()
	if storeDir == "" {
		storeDir = t.TempDir()
	}
	so := o.store
	if o.config != "" {
		p, err := quota.Parse([]byte(o.config))
		if err != nil {
			t.Fatalf("quota.Parse: %v", err)
		}
		so.Policy = p
	}
	if o.clock != nil {
		so.Now = o.clock.Now
	}
	s, err := store.Open(storeDir, so)
	if err != nil {
		t.Fatalf("store.Open: %v", err)
	}
	fo := o.fs
	if fo.UID == 0 && fo.GID == 0 {
		fo.UID, fo.GID = uint32(os.Getuid()), uint32(os.Getgid())
	}
	m, err := MountStore(point, s, MountConfig{Options: fo, Debug: os.Getenv("IRISKVFS_FUSE_DEBUG") == "1", wrapRaw: o.wrapRaw})
	if err != nil {
		s.Close()
		t.Fatalf("MountStore: %v", err)
	}
	mounted.Lock()
	mounted.points = append(mounted.points, point)
	mounted.Unlock()
	tm := &testMount{t: t, dir: point, store: s, m: m}
	t.Cleanup(func() { tm.unmount() })
	return tm
}

// unmount unmounts (retrying while the kernel still holds a file of ours
// open) and closes the store. A mount that will not go is detached lazily
// and the test fails.
func (tm *testMount) unmount() {
	t := tm.t
	if tm.m == nil {
		return
	}
	var err error
	for i := 0; i < 50; i++ {
		if err = tm.m.Unmount(); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Errorf("unmount %s: %v; detaching lazily", tm.dir, err)
		if lerr := LazyUnmount(tm.dir); lerr != nil {
			t.Errorf("lazy unmount: %v", lerr)
		}
	}
	tm.m = nil
	if err := tm.store.Close(); err != nil {
		t.Errorf("store.Close: %v", err)
	}
	if _, ok := FindMount(tm.dir); ok {
		t.Errorf("%s is still mounted after cleanup", tm.dir)
	}
}

// put writes a value through the store, not the mount.
func (tm *testMount) put(scope, key string, data []byte, opts store.PutOptions) {
	tm.t.Helper()
	if _, err := tm.store.Put(scope, key, bytes.NewReader(data), opts); err != nil {
		tm.t.Fatalf("store.Put %s/%s: %v", scope, key, err)
	}
}

// get reads a value through the store.
func (tm *testMount) get(scope, key string) ([]byte, error) {
	b, _, err := tm.store.Get(scope, key)
	return b, err
}

// run runs a command and returns its stdout; it fails the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runErr(name, args...)
	if err != nil {
		t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return out
}

// runErr runs a command; the error includes its stderr.
func runErr(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return stdout.String(), fmt.Errorf("%w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return stdout.String(), nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-done
		return stdout.String(), fmt.Errorf("%s timed out after 30s (a read that never ends?)", name)
	}
}

// sh runs a shell command line.
func sh(t testing.TB, script string) string {
	t.Helper()
	return run(t, "sh", "-c", script)
}

// wantErrno fails unless err is (or wraps) errno.
func wantErrno(t testing.TB, what string, err error, errno syscall.Errno) {
	t.Helper()
	if err == nil {
		t.Errorf("%s: succeeded, want %v (%s)", what, errno, errnoName(errno))
		return
	}
	if !errors.Is(err, errno) {
		var got syscall.Errno
		if errors.As(err, &got) {
			t.Errorf("%s: got %v (%s), want %v (%s)", what, err, errnoName(got), errno, errnoName(errno))
		} else {
			t.Errorf("%s: got %v, want %v (%s)", what, err, errno, errnoName(errno))
		}
	}
}

func errnoName(e syscall.Errno) string {
	names := map[syscall.Errno]string{
		syscall.ENOENT: "ENOENT", syscall.EINVAL: "EINVAL", syscall.ENAMETOOLONG: "ENAMETOOLONG",
		syscall.EPERM: "EPERM", syscall.EACCES: "EACCES", syscall.EDQUOT: "EDQUOT", syscall.EFBIG: "EFBIG",
		syscall.EIO: "EIO", syscall.ENOSPC: "ENOSPC", syscall.EBUSY: "EBUSY", syscall.EXDEV: "EXDEV",
		syscall.ENOSYS: "ENOSYS", syscall.EEXIST: "EEXIST", syscall.ESTALE: "ESTALE", syscall.ENODATA: "ENODATA",
		syscall.ENOTSUP: "ENOTSUP", syscall.EROFS: "EROFS",
	}
	if n, ok := names[e]; ok {
		return n
	}
	return fmt.Sprintf("errno %d", int(e))
}

// listDir returns the sorted names in dir.
func listDir(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("ReadDir %s: %v", dir, err)
	}
	names := make([]string, len(ents))
	for i, e := range ents {
		names[i] = e.Name()
	}
	sort.Strings(names)
	return names
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// readFile reads a file through the mount and fails the test on error.
func readFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("ReadFile %s: %v", path, err)
	}
	return b
}

func writeFile(t testing.TB, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		t.Fatalf("WriteFile %s: %v", path, err)
	}
}

// TestMountUnmount: a mount shows up with its type and goes away cleanly.
func TestMountUnmount(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	mi, ok := FindMount(tm.dir)
	if !ok || mi.Type != FSType {
		t.Fatalf("FindMount(%s) = %+v, %v; want type %s", tm.dir, mi, ok, FSType)
	}
	if mi.Source != tm.store.Dir() {
		t.Errorf("mount source %q, want the store dir %q", mi.Source, tm.store.Dir())
	}
	tm.unmount()
	if _, ok := FindMount(tm.dir); ok {
		t.Fatalf("still mounted after Unmount")
	}
}
