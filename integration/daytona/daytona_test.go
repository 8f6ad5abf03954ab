package daytona_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/integration/daytona"
	"github.com/iriskvfs/iriskvfs/integration/daytona/daytonatest"
)

// testVersion is what the binary built by TestMain says it is.
const testVersion = "iriskvfs daytona-test"

// binary is the iriskvfs CLI built by TestMain.
var binary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "iriskvfs-daytona-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binary = filepath.Join(dir, "iriskvfs")
	build := exec.Command("go", "build", "-o", binary,
		"-ldflags", "-X main.version="+strings.TrimPrefix(testVersion, "iriskvfs "),
		"github.com/iriskvfs/iriskvfs/cmd/iriskvfs")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "building the CLI: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func requireFUSE(t *testing.T) {
	t.Helper()
	why := ""
	if _, err := os.Stat("/dev/fuse"); err != nil {
		why = err.Error()
	} else if os.Geteuid() != 0 {
		why = "not root"
	}
	if why != "" {
		if os.Getenv("IRISKVFS_REQUIRE_FUSE") == "1" {
			t.Fatalf("cannot mount: %s (and IRISKVFS_REQUIRE_FUSE=1)", why)
		}
		t.Skipf("cannot mount: %s (set IRISKVFS_REQUIRE_FUSE=1 to fail instead)", why)
	}
}

func newClient(t *testing.T, apiURL string) *daytona.Client {
	t.Helper()
	c, err := daytona.New(daytona.Config{APIURL: apiURL, APIKey: daytonatest.Token, StartTimeout: 20 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// newSandbox registers a sandbox whose filesystem is a temporary directory.
func newSandbox(t *testing.T, f *daytonatest.Fake, id, state string) (root string, l daytona.Layout) {
	t.Helper()
	root = t.TempDir()
	f.Add(&daytonatest.Sandbox{ID: id, State: state, StartPolls: 2, Root: root})
	return root, daytona.Layout{Dir: filepath.Join(root, "workspace", ".iris")}
}

// unmountAtEnd makes sure nothing stays mounted at l's mount point.
func unmountAtEnd(t *testing.T, l daytona.Layout) {
	t.Cleanup(func() {
		if !mounted(l.Mount()) {
			return
		}
		out, err := exec.Command(l.Bin(), "--store", l.Store(), "unmount", l.Mount()).CombinedOutput()
		if err != nil {
			t.Logf("unmount: %v: %s", err, out)
			_ = exec.Command("umount", "-l", l.Mount()).Run()
		}
		if mounted(l.Mount()) {
			t.Errorf("%s is still mounted", l.Mount())
		}
	})
}

func mounted(point string) bool {
	b, _ := os.ReadFile("/proc/mounts")
	return strings.Contains(string(b), " "+point+" fuse")
}

func TestInitEndToEnd(t *testing.T) {
	requireFUSE(t)
	f := daytonatest.New(t)
	_, l := newSandbox(t, f, "sb1", "stopped")
	unmountAtEnd(t, l)
	c := newClient(t, f.APIURL())
	ctx := context.Background()

	var lines []string
	opts := daytona.InitOptions{
		Layout: l, Binary: binary, Version: testVersion, GOARCH: runtime.GOARCH,
		Report: func(s string) { lines = append(lines, s) },
	}
	changed, err := c.Init(ctx, "sb1", opts)
	if err != nil {
		t.Fatalf("init: %v\n%s", err, strings.Join(lines, "\n"))
	}
	out := strings.Join(lines, "\n")
	t.Logf("first run:\n%s", out)
	if !changed {
		t.Error("the first run changed nothing")
	}
	for _, want := range []string{"sandbox sb1: started", "fuse3: already installed", "directories: created",
		"binary: uploaded " + testVersion, "(was: none)", "mount: mounted " + l.Mount(), "verify: " + l.Mount() + " answers"} {
		if !strings.Contains(out, want) {
			t.Errorf("first run: no %q in\n%s", want, out)
		}
	}
	if f.State("sb1") != "started" {
		t.Errorf("state %s", f.State("sb1"))
	}
	if !mounted(l.Mount()) {
		t.Fatal("not mounted")
	}
	if fi, err := os.Stat(l.Bin()); err != nil || fi.Mode().Perm()&0o100 == 0 {
		t.Errorf("binary: %v %v", fi, err)
	}
	if _, err := os.Stat(l.Bin() + ".new"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the upload was left beside the binary: %v", err)
	}
	// --seed: the instruction sets are there.
	if ents, err := os.ReadDir(l.Mount()); err != nil || len(ents) == 0 {
		t.Errorf("mount: %v %v", ents, err)
	}

	// Second run: nothing changes, and it says so.
	before := len(f.Requests())
	lines = nil
	changed, err = c.Init(ctx, "sb1", opts)
	out = strings.Join(lines, "\n")
	t.Logf("second run:\n%s", out)
	if err != nil {
		t.Fatalf("second init: %v", err)
	}
	if changed {
		t.Error("the second run changed something")
	}
	for _, want := range []string{"sandbox sb1: already started", "fuse3: already installed", "directories: " + l.Dir + " already present",
		"binary: " + l.Bin() + " already " + testVersion, "mount: " + l.Mount() + " already mounted", "nothing to do"} {
		if !strings.Contains(out, want) {
			t.Errorf("second run: no %q in\n%s", want, out)
		}
	}
	for _, r := range f.Requests()[before:] {
		if strings.Contains(r, "/start") || strings.Contains(r, "/upload") || strings.Contains(r, "/permissions") {
			t.Errorf("second run did %s", r)
		}
	}

	// Another version installed: replaced (beside, then mv), the running
	// mount left alone.
	old := l.Bin() + ".old"
	if err := os.WriteFile(old, []byte("#!/bin/sh\necho iriskvfs old-version\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(old, l.Bin()); err != nil {
		t.Fatal(err)
	}
	lines = nil
	if changed, err = c.Init(ctx, "sb1", opts); err != nil || !changed {
		t.Fatalf("init over another version: %v changed=%v", err, changed)
	}
	out = strings.Join(lines, "\n")
	if !strings.Contains(out, "binary: uploaded "+testVersion) || !strings.Contains(out, "(was: iriskvfs old-version)") ||
		!strings.Contains(out, "already mounted (by the previous binary until remounted)") {
		t.Errorf("init over another version:\n%s", out)
	}

	// The toolbox API reads the mount.
	tb := sandboxToolbox(t, c, "sb1")
	stats, err := tb.ReadFile(ctx, l.Mount()+"/.stats")
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(stats)), "{") {
		t.Errorf(".stats: %q %v", stats, err)
	}

	// A killed mount (sandbox restart) is mounted again.
	out2, err := exec.Command(l.Bin(), "--store", l.Store(), "unmount", l.Mount()).CombinedOutput()
	if err != nil {
		t.Fatalf("unmount: %v %s", err, out2)
	}
	lines = nil
	if changed, err = c.Init(ctx, "sb1", opts); err != nil || !changed {
		t.Fatalf("third init: %v changed=%v\n%s", err, changed, strings.Join(lines, "\n"))
	}
	if out = strings.Join(lines, "\n"); !strings.Contains(out, "mount: mounted") {
		t.Errorf("third run:\n%s", out)
	}
}

func sandboxToolbox(t *testing.T, c *daytona.Client, id string) *daytona.Toolbox {
	t.Helper()
	sb, err := c.GetSandbox(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return c.Toolbox(sb)
}

func TestUnknownSandbox(t *testing.T) {
	f := daytonatest.New(t)
	c := newClient(t, f.APIURL())
	_, err := c.Init(context.Background(), "nope", daytona.InitOptions{Binary: binary, Version: testVersion})
	if !errors.Is(err, daytona.ErrSandboxNotFound) {
		t.Fatalf("err = %v, want ErrSandboxNotFound", err)
	}
	if !strings.Contains(err.Error(), "nope") {
		t.Errorf("err = %v", err)
	}
}

func TestUnreachable(t *testing.T) {
	c := newClient(t, "http://127.0.0.1:1/api")
	_, err := c.GetSandbox(context.Background(), "sb1")
	if !errors.Is(err, daytona.ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("err = %v, want ErrUnreachable with the reason", err)
	}
}

func TestBadToken(t *testing.T) {
	f := daytonatest.New(t)
	newSandbox(t, f, "sb1", "started")
	c, err := daytona.New(daytona.Config{APIURL: f.APIURL(), APIKey: "wrong"})
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.GetSandbox(context.Background(), "sb1")
	var de *daytona.Error
	if !errors.As(err, &de) || de.Status != 401 || !strings.Contains(err.Error(), "Unauthorized") {
		t.Fatalf("err = %v", err)
	}
}

func TestConfigFromEnv(t *testing.T) {
	for _, k := range []string{"DAYTONA_API_KEY", "DAYTONA_JWT_TOKEN", "DAYTONA_ORGANIZATION_ID", "DAYTONA_API_URL", "DAYTONA_SERVER_URL", "DAYTONA_TARGET"} {
		t.Setenv(k, "")
	}
	if _, err := daytona.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "DAYTONA_API_KEY") {
		t.Errorf("no credentials: %v", err)
	}
	t.Setenv("DAYTONA_JWT_TOKEN", "jwt")
	if _, err := daytona.ConfigFromEnv(); err == nil || !strings.Contains(err.Error(), "DAYTONA_ORGANIZATION_ID") {
		t.Errorf("jwt without org: %v", err)
	}
	t.Setenv("DAYTONA_ORGANIZATION_ID", "org")
	cfg, err := daytona.ConfigFromEnv()
	if err != nil || cfg.APIURL != daytona.DefaultAPIURL {
		t.Errorf("jwt: %+v %v", cfg, err)
	}
	t.Setenv("DAYTONA_API_URL", "ftp://x")
	if _, err := daytona.ConfigFromEnv(); err == nil {
		t.Error("ftp URL accepted")
	}
}

func TestJWT(t *testing.T) {
	f := daytonatest.New(t)
	f.RequireOrg("org-1")
	newSandbox(t, f, "sb1", "started")
	c, err := daytona.New(daytona.Config{APIURL: f.APIURL(), JWTToken: daytonatest.Token, OrganizationID: "org-1"})
	if err != nil {
		t.Fatal(err)
	}
	tb := sandboxToolbox(t, c, "sb1")
	if res, err := tb.Exec(context.Background(), "echo ok", 5*time.Second); err != nil || strings.TrimSpace(res.Output) != "ok" {
		t.Errorf("toolbox with a JWT: %+v %v", res, err)
	}
	c, _ = daytona.New(daytona.Config{APIURL: f.APIURL(), JWTToken: daytonatest.Token, OrganizationID: "other"})
	if _, err := c.GetSandbox(context.Background(), "sb1"); err == nil {
		t.Error("the wrong organization was accepted")
	}
}

func TestStartStates(t *testing.T) {
	f := daytonatest.New(t)
	c := newClient(t, f.APIURL())
	ctx := context.Background()
	newSandbox(t, f, "stopped", "stopped")
	newSandbox(t, f, "starting", "starting")
	newSandbox(t, f, "broken", "error")
	if sb, started, err := c.EnsureStarted(ctx, "stopped"); err != nil || !started || sb.State != "started" {
		t.Errorf("stopped: %v %v %v", sb, started, err)
	}
	if sb, started, err := c.EnsureStarted(ctx, "starting"); err != nil || started || sb.State != "started" {
		t.Errorf("starting: %v %v %v", sb, started, err)
	}
	if _, _, err := c.EnsureStarted(ctx, "broken"); err == nil || !strings.Contains(err.Error(), "fake failure") {
		t.Errorf("error state: %v", err)
	}
}

func TestToolbox(t *testing.T) {
	f := daytonatest.New(t)
	root, _ := newSandbox(t, f, "sb1", "started")
	c := newClient(t, f.APIURL())
	tb := sandboxToolbox(t, c, "sb1")
	ctx := context.Background()

	res, err := tb.Exec(ctx, "echo hello; echo oops >&2; exit 3", 10*time.Second)
	if err != nil || res.ExitCode != 3 || !strings.Contains(res.Output, "hello") || !strings.Contains(res.Output, "oops") {
		t.Errorf("exec: %+v %v", res, err)
	}
	if _, err := tb.Exec(ctx, "sleep 5", time.Second); err == nil || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("timeout: %v", err)
	}

	p := filepath.Join(root, "d", "f.txt")
	if err := tb.WriteFile(ctx, p, strings.NewReader("data")); err != nil {
		t.Fatal(err)
	}
	if err := tb.WriteFile(ctx, p+".empty", strings.NewReader("")); !errors.Is(err, daytona.ErrEmptyUpload) {
		t.Errorf("empty upload: %v", err)
	}
	if b, err := tb.ReadFile(ctx, p); err != nil || string(b) != "data" {
		t.Errorf("read: %q %v", b, err)
	}
	if fi, err := tb.Stat(ctx, p); err != nil || fi.GetSize() != 4 || fi.GetIsDir() {
		t.Errorf("stat: %v %v", fi, err)
	}
	if fis, err := tb.List(ctx, filepath.Dir(p)); err != nil || len(fis) != 1 || fis[0].GetName() != "f.txt" {
		t.Errorf("list: %v %v", fis, err)
	}
	if err := tb.Chmod(ctx, p, "0755"); err != nil {
		t.Error(err)
	}
	if err := tb.Delete(ctx, filepath.Dir(p), false); err == nil {
		t.Error("deleted a directory without recursive")
	}
	if err := tb.Delete(ctx, p, false); err != nil {
		t.Error(err)
	}
	if _, err := tb.ReadFile(ctx, p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read deleted: %v", err)
	}
	if _, err := tb.Stat(ctx, "/etc/passwd"); err == nil {
		t.Error("the fake served a path outside the sandbox")
	}
	f.SetState("sb1", "stopped")
	if _, err := tb.Stat(ctx, root); !errors.Is(err, daytona.ErrUnreachable) {
		t.Errorf("stopped sandbox: %v", err)
	}
}

// TestInitInstallsFuse3 runs init in a sandbox whose PATH has no
// fusermount3: init installs fuse3 with apt-get (a stand-in that records
// its arguments and provides fusermount3).
func TestInitInstallsFuse3(t *testing.T) {
	requireFUSE(t)
	f := daytonatest.New(t)
	root := t.TempDir()
	shims := filepath.Join(root, "shims")
	if err := os.Mkdir(shims, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tool := range []string{"sh", "id", "uname", "grep", "head", "cut", "sha256sum", "mkdir", "mv", "ls", "rm", "env", "cat", "ln"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Skipf("no %s here", tool)
		}
		if err := os.Symlink(p, filepath.Join(shims, tool)); err != nil {
			t.Fatal(err)
		}
	}
	fusermount, err := exec.LookPath("fusermount3")
	if err != nil {
		t.Skip("no fusermount3 here")
	}
	aptLog := filepath.Join(root, "apt.log")
	apt := fmt.Sprintf("#!/bin/sh\necho \"$DEBIAN_FRONTEND $*\" >> %s\nln -s %s %s/fusermount3\n", aptLog, fusermount, shims)
	if err := os.WriteFile(filepath.Join(shims, "apt-get"), []byte(apt), 0o755); err != nil {
		t.Fatal(err)
	}
	f.Add(&daytonatest.Sandbox{ID: "sb1", State: "started", Root: root, Env: []string{"PATH=" + shims}})
	l := daytona.Layout{Dir: filepath.Join(root, "workspace", ".iris")}
	unmountAtEnd(t, l)
	c := newClient(t, f.APIURL())
	var lines []string
	opts := daytona.InitOptions{Layout: l, Binary: binary, Version: testVersion, Report: func(s string) { lines = append(lines, s) }}
	if _, err := c.Init(context.Background(), "sb1", opts); err != nil {
		t.Fatalf("init: %v\n%s", err, strings.Join(lines, "\n"))
	}
	if out := strings.Join(lines, "\n"); !strings.Contains(out, "fuse3: installed") {
		t.Errorf("no install:\n%s", out)
	}
	if b, _ := os.ReadFile(aptLog); string(b) != "noninteractive install -y --no-install-recommends fuse3\n" {
		t.Errorf("apt-get ran as %q", b)
	}
	lines = nil
	if changed, err := c.Init(context.Background(), "sb1", opts); err != nil || changed || !strings.Contains(strings.Join(lines, "\n"), "fuse3: already installed") {
		t.Errorf("second init: %v changed=%v\n%s", err, changed, strings.Join(lines, "\n"))
	}
}
