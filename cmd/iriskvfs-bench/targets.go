package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Target names, in the order the report shows them.
const (
	tTmpfs    = "tmpfs"
	tExt4     = "ext4"         // durable writes and the evicted-blob read only
	tExt4Dir  = "ext4+dirsync" // durable writes only
	tIris     = "iriskvfs"
	tIrisRO   = "iriskvfs-ro" // workloads 1 and 2 only
	tLoopback = "loopback"
	tLoopExt4 = "loopback-ext4" // durable writes only
	tGocrypt  = "gocryptfs"
	tRclone   = "rclone"
)

// mounter is a FUSE filesystem the bench mounts fresh for every
// repetition and unmounts at its end.
type mounter interface {
	// mount returns once the mount answers, and how long that took.
	mount() (time.Duration, error)
	// unmount stops the daemon; it is safe to call when nothing is
	// mounted, and it never leaves the mount behind.
	unmount() (time.Duration, error)
	daemonPid() int
}

// target is one filesystem the workloads run against.
type target struct {
	name string
	desc string // what it is and how it is set up
	skip string // non-empty: not run, and why ("skipped (not installed)")
	root string // where the tree is seen: the mount point, or the tmpfs tree
	m    mounter

	// iriskvfs: scope files, close is durable; the others: a tree where
	// writes go write+fsync+close+rename into place.
	iris bool
	// writeDir and mixDir hold what workloads 4 and 6 write; tmpDir their
	// temporary files (not for iriskvfs).
	writeDir, mixDir, tmpDir string
	syncDir                  bool // also fsync the directory after the rename

	// failed says why the current repetition has no figures for a peer.
	failed string
}

func (t *target) path(rel string) string { return filepath.Join(t.root, rel) }
func (t *target) fuse() bool             { return t.m != nil }

// ---- iriskvfs ----

var pidRE = regexp.MustCompile(`daemon pid (\d+)`)

// irisMount is `iriskvfs mount --daemon` of a store fixture.
type irisMount struct {
	bin      string
	fx       *fixture
	mnt      string
	readOnly bool
	debug    bool
	pid      int
	once     sync.Once
	mu       sync.Mutex // mount and unmount, one at a time
}

func (m *irisMount) daemonPid() int { return m.pid }

func (m *irisMount) mount() (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if cleanup.stopping.Load() {
		return 0, errStopping
	}
	m.once.Do(func() { cleanup.add(func() { _, _ = m.unmount() }) })
	args := []string{"--store", m.fx.storeDir, "--config", m.fx.config, "mount", "--daemon"}
	if m.debug {
		args = append(args, "--debug")
	}
	if m.readOnly {
		args = append(args, "--read-only")
	}
	args = append(args, m.mnt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, m.bin, args...)
	cmd.Env = childEnv()
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("iriskvfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	sm := pidRE.FindSubmatch(out)
	if sm == nil {
		return 0, fmt.Errorf("no daemon pid in %q", out)
	}
	m.pid, _ = strconv.Atoi(string(sm[1]))
	return d, nil
}

// unmount runs `iriskvfs unmount`, which stops the daemon and waits for
// the mount to go and the store to be released; if that fails it aborts
// the connection, detaches the mount and stops the daemon.
func (m *irisMount) unmount() (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	t, mounted := mountedType(m.mnt)
	if !mounted && m.pid == 0 {
		return 0, nil
	}
	var uerr error
	t0 := time.Now()
	if mounted {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, m.bin, "unmount", m.mnt)
		cmd.Env = childEnv()
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			uerr = fmt.Errorf("iriskvfs unmount %s: %w: %s", m.mnt, err, strings.TrimSpace(string(out)))
			fmt.Fprintf(os.Stderr, "%v; detaching %s\n", uerr, m.mnt)
			if t == "fuse.iriskvfs" {
				_ = syscall.Unmount(m.mnt, syscall.MNT_FORCE) // aborts the connection
			}
			_ = syscall.Unmount(m.mnt, syscall.MNT_DETACH)
		}
	}
	d := time.Since(t0)
	if m.pid > 0 {
		stopPid(m.pid)
		m.pid = 0
	}
	return d, uerr
}

// stopPid waits a little for a process to exit, then terminates it.
func stopPid(pid int) {
	alive := func() bool { return syscall.Kill(pid, 0) == nil && !isZombie(pid) }
	for i := 0; i < 40 && alive(); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	if alive() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && alive(); i++ {
			time.Sleep(50 * time.Millisecond)
		}
	}
	if alive() {
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

func isZombie(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] == 'Z'
}

// ---- peers: a daemon run in the foreground as our child ----

// procMount is a FUSE daemon this program starts as a child process in the
// foreground (its own process group, so a Ctrl-C reaches only us and we
// unmount in order; SIGTERM if we die).
type procMount struct {
	name    string
	fstype  string // as /proc/self/mountinfo shows it
	mnt     string
	argv    []string
	env     []string // added to childEnv()
	logPath string

	cmd  *exec.Cmd
	done chan struct{}
	once sync.Once
	mu   sync.Mutex // mount and unmount, one at a time
}

func (p *procMount) daemonPid() int {
	if p.cmd == nil || p.cmd.Process == nil {
		return 0
	}
	return p.cmd.Process.Pid
}

func (p *procMount) mount() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if cleanup.stopping.Load() {
		return 0, errStopping
	}
	p.once.Do(func() { cleanup.add(func() { _, _ = p.unmount() }) })
	if err := os.MkdirAll(p.mnt, 0o755); err != nil {
		return 0, err
	}
	logf, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return 0, err
	}
	defer logf.Close()
	fmt.Fprintf(logf, "=== %s: %s\n", time.Now().Format(time.RFC3339), strings.Join(p.argv, " "))
	cmd := exec.Command(p.argv[0], p.argv[1:]...)
	cmd.Env = append(childEnv(), p.env...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	p.cmd = cmd
	p.done = make(chan struct{})
	done := p.done
	go func() { _ = cmd.Wait(); close(done) }()
	for {
		if t, ok := mountedType(p.mnt); ok && t == p.fstype {
			var st syscall.Stat_t
			if syscall.Stat(p.mnt, &st) == nil {
				return time.Since(t0), nil
			}
		}
		select {
		case <-done:
			return 0, fmt.Errorf("%s exited before it mounted (%v); its log: %s", p.name, cmd.ProcessState, tail(p.logPath))
		case <-time.After(2 * time.Millisecond):
		}
		if time.Since(t0) > time.Minute {
			_, _ = p.unmountLocked()
			return 0, fmt.Errorf("%s did not mount in a minute; its log: %s", p.name, tail(p.logPath))
		}
	}
}

// unmount unmounts (umount2 as root; the daemon then exits by itself) and
// waits for the daemon; a busy mount is retried, then the daemon is
// terminated and the mount detached.
func (p *procMount) unmount() (time.Duration, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.unmountLocked()
}

func (p *procMount) unmountLocked() (time.Duration, error) {
	t0 := time.Now()
	var uerr error
	for i := 0; ; i++ {
		t, ok := mountedType(p.mnt)
		if !ok || t != p.fstype {
			break
		}
		err := syscall.Unmount(p.mnt, 0)
		if err == nil {
			continue
		}
		if errors.Is(err, syscall.EBUSY) && i < 50 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		uerr = fmt.Errorf("umount %s: %w; detaching it", p.mnt, err)
		_ = syscall.Unmount(p.mnt, syscall.MNT_DETACH)
		break
	}
	d := time.Since(t0)
	if p.cmd != nil {
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-p.done:
			case <-time.After(5 * time.Second):
				_ = p.cmd.Process.Kill()
				<-p.done
			}
		}
		d = time.Since(t0)
		p.cmd = nil
	}
	if t, ok := mountedType(p.mnt); ok && t == p.fstype {
		_ = syscall.Unmount(p.mnt, syscall.MNT_DETACH)
	}
	return d, uerr
}

// tail is the end of a log file, on one line.
func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log)"
	}
	if len(b) > 600 {
		b = b[len(b)-600:]
	}
	return strings.Join(strings.Fields(string(bytes.TrimSpace(b))), " ")
}

// ---- peers: what is installed ----

type peer struct {
	name, bin, version, skip string
}

// findPeer looks for a peer's program and asks it its version.
func findPeer(name string, versionArgs ...string) peer {
	p := peer{name: name}
	bin, err := exec.LookPath(name)
	if err != nil {
		p.skip = "skipped (not installed)"
		return p
	}
	p.bin = bin
	out, err := exec.Command(bin, versionArgs...).CombinedOutput()
	if err != nil {
		p.skip = fmt.Sprintf("skipped (%s %s: %v)", name, strings.Join(versionArgs, " "), err)
		return p
	}
	p.version = strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	return p
}
