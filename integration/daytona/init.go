package daytona

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path"
	"regexp"
	"strings"
	"time"
)

// DefaultDir is where iriskvfs lives in a sandbox: DIR/bin/iriskvfs, the
// mount DIR/kv-cache and the store DIR/kv-store (the CLI's defaults).
const DefaultDir = "/workspace/.iris"

// Layout names the paths of iriskvfs in a sandbox.
type Layout struct{ Dir string }

func (l Layout) dir() string {
	if l.Dir == "" {
		return DefaultDir
	}
	return l.Dir
}

// Bin is the installed binary.
func (l Layout) Bin() string { return path.Join(l.dir(), "bin", "iriskvfs") }

// Mount is the mount point.
func (l Layout) Mount() string { return path.Join(l.dir(), "kv-cache") }

// Store is the backing store.
func (l Layout) Store() string { return path.Join(l.dir(), "kv-store") }

// CLI is the command line that runs the installed binary on the store.
func (l Layout) CLI(args string) string {
	return l.Bin() + " --store " + l.Store() + " " + args
}

// shellSafe: paths that need no quoting (and hold no single quote, so
// commands can be wrapped in sh -c '…').
var shellSafe = regexp.MustCompile(`^/[A-Za-z0-9/._+-]+$`)

func (l Layout) check() error {
	if !shellSafe.MatchString(l.dir()) || strings.Contains(l.dir(), "..") {
		return fmt.Errorf("sandbox directory %q: want an absolute path of letters, digits and /._+-", l.dir())
	}
	return nil
}

// InitOptions are the inputs of Init.
type InitOptions struct {
	Layout Layout
	// Binary is the local iriskvfs built for the sandbox (linux), and
	// Version what its `version` command prints ("iriskvfs v1.2.3").
	Binary, Version string
	// GOARCH, when set, is checked against the sandbox's `uname -m`.
	GOARCH string
	// Report receives one line per step.
	Report func(line string)
}

// probe is what one command learns about the sandbox.
type probe struct {
	uid, arch, binVersion, binSHA            string
	devFuse, fusermount, sudo, dirs, mounted bool
	answers                                  bool
}

func (t *Toolbox) probe(ctx context.Context, l Layout) (probe, error) {
	script := strings.Join([]string{
		`echo uid=$(id -u)`,
		`echo arch=$(uname -m)`,
		`test -c /dev/fuse && echo devfuse=1`,
		`command -v fusermount3 >/dev/null 2>&1 && echo fusermount=1`,
		`sudo -n true >/dev/null 2>&1 && echo sudo=1`,
		fmt.Sprintf(`test -d %s -a -d %s -a -d %s && echo dirs=1`, path.Dir(l.Bin()), l.Mount(), l.Store()),
		fmt.Sprintf(`test -x %s && echo binversion=$(%s version 2>/dev/null | head -n 1)`, l.Bin(), l.Bin()),
		fmt.Sprintf(`test -x %s && echo binsha=$(sha256sum %s 2>/dev/null | cut -d" " -f1)`, l.Bin(), l.Bin()),
		fmt.Sprintf(`grep -qs " %s fuse" /proc/mounts && echo mounted=1`, l.Mount()),
		fmt.Sprintf(`test -e %s/.stats && echo answers=1`, l.Mount()),
		`true`,
	}, "; ")
	res, err := t.Exec(ctx, shC(script), 30*time.Second)
	if err != nil {
		return probe{}, err
	}
	if res.ExitCode != 0 {
		return probe{}, fmt.Errorf("probing the sandbox failed (exit %d): %s", res.ExitCode, oneLine(res.Output))
	}
	var p probe
	for _, line := range strings.Split(res.Output, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), "=")
		if !ok {
			continue
		}
		switch k {
		case "uid":
			p.uid = v
		case "arch":
			p.arch = v
		case "binversion":
			p.binVersion = v
		case "binsha":
			p.binSHA = v
		case "devfuse":
			p.devFuse = true
		case "fusermount":
			p.fusermount = true
		case "sudo":
			p.sudo = true
		case "dirs":
			p.dirs = true
		case "mounted":
			p.mounted = true
		case "answers":
			p.answers = true
		}
	}
	if p.uid == "" {
		return probe{}, fmt.Errorf("probing the sandbox gave no answer: %s", oneLine(res.Output))
	}
	return p, nil
}

// asRoot prefixes a command with sudo when the sandbox user is not root.
func (p probe) asRoot(cmd string) (string, error) {
	if p.uid == "0" {
		return cmd, nil
	}
	if !p.sudo {
		return "", fmt.Errorf("the sandbox user (uid %s) is not root and has no password-less sudo", p.uid)
	}
	return "sudo -n " + cmd, nil
}

// shC wraps a command for both daemon generations (old ones split argv
// themselves): sh -c '<cmd>'. cmd holds no single quote.
func shC(cmd string) string {
	if strings.Contains(cmd, "'") {
		panic("daytona: single quote in a command: " + cmd)
	}
	return "sh -c '" + cmd + "'"
}

func oneLine(s string) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > 500 {
		s = s[:500] + "…"
	}
	return s
}

var goarchUname = map[string][]string{
	"amd64": {"x86_64", "amd64"},
	"arm64": {"aarch64", "arm64"},
	"386":   {"i386", "i686"},
	"arm":   {"armv7l", "armv6l"},
}

// Init makes sandbox id ready: started, fuse3 installed, this binary
// installed, the cache mounted (daemon, --seed) and answering. It reports
// one line per step and returns whether it changed anything; a second run
// changes nothing.
func (c *Client) Init(ctx context.Context, id string, opts InitOptions) (changed bool, err error) {
	report := opts.Report
	if report == nil {
		report = func(string) {}
	}
	l := opts.Layout
	if err := l.check(); err != nil {
		return false, err
	}
	sb, started, err := c.EnsureStarted(ctx, id)
	if err != nil {
		return false, err
	}
	if started {
		report(fmt.Sprintf("sandbox %s: started", id))
		changed = true
	} else {
		report(fmt.Sprintf("sandbox %s: already started", id))
	}
	t := c.Toolbox(sb)
	p, err := t.probe(ctx, l)
	if err != nil {
		return changed, err
	}
	if opts.GOARCH != "" {
		ok := false
		for _, a := range goarchUname[opts.GOARCH] {
			ok = ok || a == p.arch
		}
		if !ok {
			return changed, fmt.Errorf("the sandbox is %s but the binary is linux/%s (pass a binary built for it)", p.arch, opts.GOARCH)
		}
	}
	if !p.devFuse {
		return changed, fmt.Errorf("the sandbox has no /dev/fuse (GPU sandboxes are not privileged): cannot mount")
	}

	// fuse3
	if p.fusermount {
		report("fuse3: already installed")
	} else {
		apt := "env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends fuse3"
		update := "apt-get update -q"
		if apt, err = p.asRoot(apt); err != nil {
			return changed, fmt.Errorf("fuse3 is missing and cannot be installed: %v", err)
		}
		update, _ = p.asRoot(update)
		cmd := fmt.Sprintf("%s >/dev/null 2>&1 || { %s && %s; } && command -v fusermount3", apt, update, apt)
		res, err := t.Exec(ctx, shC(cmd), 10*time.Minute)
		if err != nil {
			return changed, fmt.Errorf("installing fuse3: %w", err)
		}
		if res.ExitCode != 0 {
			return changed, fmt.Errorf("installing fuse3 failed (exit %d): %s", res.ExitCode, oneLine(res.Output))
		}
		report("fuse3: installed")
		changed = true
	}

	// directories
	if p.dirs {
		report(fmt.Sprintf("directories: %s already present", l.dir()))
	} else {
		dirs := fmt.Sprintf("%s %s %s", path.Dir(l.Bin()), l.Mount(), l.Store())
		cmd := "mkdir -p " + dirs + " 2>/dev/null"
		if p.uid != "0" && p.sudo {
			cmd += fmt.Sprintf(" || { sudo -n mkdir -p %s && sudo -n chown -R $(id -u):$(id -g) %s; }", dirs, l.dir())
		}
		res, err := t.Exec(ctx, shC(cmd), 30*time.Second)
		if err != nil {
			return changed, fmt.Errorf("creating %s: %w", l.dir(), err)
		}
		if res.ExitCode != 0 {
			return changed, fmt.Errorf("cannot create %s in the sandbox (exit %d): %s", l.dir(), res.ExitCode, oneLine(res.Output))
		}
		report(fmt.Sprintf("directories: created %s", l.dir()))
		changed = true
	}

	// binary
	binUpdated := false
	same := p.binVersion == opts.Version
	if same && strings.Contains(opts.Version, "devel") && p.binSHA != "" && opts.Binary != "" {
		// Development builds all say "devel": compare the bytes.
		sum, err := fileSHA256(opts.Binary)
		if err != nil {
			return changed, err
		}
		same = sum == p.binSHA
	}
	if same {
		report(fmt.Sprintf("binary: %s already %s", l.Bin(), opts.Version))
	} else {
		if opts.Binary == "" {
			return changed, fmt.Errorf("no local binary to upload")
		}
		tmp := l.Bin() + ".new"
		if err := t.Upload(ctx, opts.Binary, tmp); err != nil {
			return changed, fmt.Errorf("uploading the binary: %w", err)
		}
		if err := t.Chmod(ctx, tmp, "0755"); err != nil {
			return changed, fmt.Errorf("making the binary executable: %w", err)
		}
		// mv, not the toolbox's move (409 on an existing destination);
		// a rename is allowed while the old binary runs.
		cmd := fmt.Sprintf("mv -f %s %s && %s version", tmp, l.Bin(), l.Bin())
		res, err := t.Exec(ctx, shC(cmd), 30*time.Second)
		if err != nil {
			return changed, fmt.Errorf("installing the binary: %w", err)
		}
		got := strings.TrimSpace(firstLine(res.Output))
		if res.ExitCode != 0 || got != opts.Version {
			return changed, fmt.Errorf("the installed binary does not run (exit %d): %s", res.ExitCode, oneLine(res.Output))
		}
		was := p.binVersion
		if was == "" {
			was = "none"
		}
		report(fmt.Sprintf("binary: uploaded %s to %s (was: %s)", opts.Version, l.Bin(), was))
		changed, binUpdated = true, true
	}

	// mount
	if p.mounted && p.answers {
		msg := fmt.Sprintf("mount: %s already mounted", l.Mount())
		if binUpdated {
			msg += " (by the previous binary until remounted)"
		}
		report(msg)
	} else {
		if err := t.mount(ctx, l); err != nil {
			return changed, err
		}
		if p.mounted {
			report(fmt.Sprintf("mount: remounted %s (the old mount did not answer)", l.Mount()))
		} else {
			report(fmt.Sprintf("mount: mounted %s (daemon, --seed)", l.Mount()))
		}
		changed = true
	}

	// verify
	n, err := t.verifyMount(ctx, l)
	if err != nil {
		return changed, err
	}
	report(fmt.Sprintf("verify: %s answers (%d entries)", l.Mount(), n))
	if !changed {
		report(fmt.Sprintf("nothing to do: sandbox %s was already initialized", id))
	}
	return changed, nil
}

// mount starts the mount daemon with --seed; the daemon detaches (setsid,
// stdio to its log), so the command returns once the mount answers.
func (t *Toolbox) mount(ctx context.Context, l Layout) error {
	res, err := t.Exec(ctx, shC(l.CLI("mount "+l.Mount()+" --daemon --seed")), 90*time.Second)
	if err != nil {
		return fmt.Errorf("mounting: %w", err)
	}
	if res.ExitCode != 0 {
		return fmt.Errorf("mounting %s failed (exit %d): %s", l.Mount(), res.ExitCode, oneLine(res.Output))
	}
	return nil
}

// verifyMount checks the mount through the file API (its .stats) and a
// shell (it is a FUSE mount and lists); it returns the number of entries.
func (t *Toolbox) verifyMount(ctx context.Context, l Layout) (int, error) {
	fi, err := t.Stat(ctx, l.Mount()+"/.stats")
	if err != nil {
		return 0, fmt.Errorf("the mount does not answer: %w", err)
	}
	if fi.GetIsDir() {
		return 0, fmt.Errorf("the mount does not answer: %s/.stats is a directory", l.Mount())
	}
	cmd := fmt.Sprintf(`grep -qs " %s fuse" /proc/mounts && ls -A %s`, l.Mount(), l.Mount())
	res, err := t.Exec(ctx, shC(cmd), 30*time.Second)
	if err != nil {
		return 0, fmt.Errorf("the mount does not answer: %w", err)
	}
	if res.ExitCode != 0 {
		return 0, fmt.Errorf("%s is not a FUSE mount that answers (exit %d): %s", l.Mount(), res.ExitCode, oneLine(res.Output))
	}
	return len(strings.Fields(res.Output)), nil
}

func fileSHA256(name string) (string, error) {
	f, err := os.Open(name)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
