package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/integration/daytona"
	"github.com/iriskvfs/iriskvfs/integration/daytona/daytonatest"
)

// daytonaEnv points the CLI at apiURL with the fake's token.
func daytonaEnv(t *testing.T, apiURL string) {
	for _, k := range []string{"DAYTONA_JWT_TOKEN", "DAYTONA_ORGANIZATION_ID", "DAYTONA_SERVER_URL", "DAYTONA_TARGET"} {
		t.Setenv(k, "")
	}
	t.Setenv("DAYTONA_API_URL", apiURL)
	t.Setenv("DAYTONA_API_KEY", daytonatest.Token)
}

// TestSandboxInit runs `sandbox init` twice against the fake Daytona: the
// fake runs the uploaded CLI for real, so the cache is really mounted.
func TestSandboxInit(t *testing.T) {
	requireFUSE(t)
	f := daytonatest.New(t)
	root := t.TempDir()
	f.Add(&daytonatest.Sandbox{ID: "sb1", State: "stopped", StartPolls: 1, Root: root})
	l := daytona.Layout{Dir: filepath.Join(root, "workspace", ".iris")}
	t.Cleanup(func() {
		if !strings.Contains(readMounts(), " "+l.Mount()+" fuse") {
			return
		}
		if out, err := exec.Command(l.Bin(), "--store", l.Store(), "unmount", l.Mount()).CombinedOutput(); err != nil {
			t.Errorf("unmount: %v %s", err, out)
			_ = exec.Command("umount", "-l", l.Mount()).Run()
		}
	})
	daytonaEnv(t, f.APIURL())

	first := mustCLI(t, nil, "sandbox", "init", "sb1", "--dir", l.Dir)
	t.Logf("first run:\n%s", first)
	for _, want := range []string{"sandbox sb1: started", "fuse3: already installed", "binary: uploaded iriskvfs ",
		"mount: mounted " + l.Mount() + " (daemon, --seed)", "verify: " + l.Mount() + " answers"} {
		if !strings.Contains(first, want) {
			t.Errorf("first run: no %q", want)
		}
	}
	if strings.Contains(first, "nothing to do") {
		t.Error("the first run says it did nothing")
	}
	if !strings.Contains(readMounts(), " "+l.Mount()+" fuse") {
		t.Fatal("not mounted")
	}
	second := mustCLI(t, nil, "sandbox", "init", "sb1", "--dir", l.Dir)
	t.Logf("second run:\n%s", second)
	for _, want := range []string{"sandbox sb1: already started", "fuse3: already installed", "already iriskvfs ",
		"mount: " + l.Mount() + " already mounted", "nothing to do: sandbox sb1 was already initialized"} {
		if !strings.Contains(second, want) {
			t.Errorf("second run: no %q", want)
		}
	}
	if strings.Contains(second, "uploaded") || strings.Contains(second, ": started") || strings.Contains(second, "mount: mounted") {
		t.Errorf("the second run changed something:\n%s", second)
	}
}

func readMounts() string {
	b, _ := os.ReadFile("/proc/mounts")
	return string(b)
}

func TestSandboxInitErrors(t *testing.T) {
	f := daytonatest.New(t)
	daytonaEnv(t, f.APIURL())
	wantErrLine(t, runCLI(t, nil, "sandbox", "init", "nope"), `^iriskvfs: .*sandbox not found.*nope`, "unknown sandbox")

	daytonaEnv(t, "http://127.0.0.1:1/api")
	wantErrLine(t, runCLI(t, nil, "sandbox", "init", "sb1"), `^iriskvfs: .*unreachable.*connection refused`, "unreachable API")

	t.Setenv("DAYTONA_API_KEY", "")
	wantErrLine(t, runCLI(t, nil, "sandbox", "init", "sb1"), `^iriskvfs: .*DAYTONA_API_KEY`, "no credentials")

	if r := runCLI(t, nil, "sandbox", "init"); r.code != exitUsage {
		t.Errorf("no sandbox id: %s", r)
	}
}
