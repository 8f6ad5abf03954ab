package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/iriskvfs/iriskvfs/fs"
	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/store"
)

// readyFDEnv names the descriptor on which a daemon child reports to its
// parent: "ok" once the mount answers, or the error that stopped it.
const readyFDEnv = "IRISKVFS_READY_FD"

func mountCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name: "mount", Usage: "mount the cache (foreground unless --daemon)", ArgsUsage: "[MOUNTPOINT]",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "daemon", Aliases: []string{"d"}, Usage: "detach once the mount answers; log to STORE/daemon.log"},
				&cli.BoolFlag{Name: "seed", Usage: "write the canonical instruction sets at mount time, and keep them present while mounted"},
				&cli.BoolFlag{Name: "allow-other", Usage: "let other users use the mount (adds default_permissions)"},
				&cli.BoolFlag{Name: "read-only", Usage: "refuse every change through the mount"},
				&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request"},
				&cli.StringFlag{Name: memoryLimitFlag, EnvVars: []string{"IRISKVFS_MEMORY_LIMIT"}, Value: defaultMemoryLimit,
					Usage: "soft limit of the daemon's Go memory, `SIZE` (e.g. 256MiB; 0 or off: none); it rises to 1.25x the live heap if that outgrows it"},
			},
			Action: cmdMount,
		},
		{
			Name: "unmount", Aliases: []string{"umount"}, Usage: "unmount (the daemon then exits)", ArgsUsage: "[MOUNTPOINT]",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "lazy", Aliases: []string{"l"}, Usage: "if the mount is busy, detach it now; its daemon exits once nothing uses it"},
			},
			Action: cmdUnmount,
		},
	}
}

func mountPoint(c *cli.Context) (string, error) {
	p := c.Args().First()
	if p == "" {
		p = os.Getenv("IRISKVFS_MOUNT")
	}
	if p == "" {
		p = defaultMount
	}
	return filepath.Abs(p)
}

func cmdMount(c *cli.Context) error {
	if err := wantArgs(c, 0, 1); err != nil {
		return err
	}
	point, err := mountPoint(c)
	if err != nil {
		return err
	}
	if _, err := parseMemoryLimit(c.String(memoryLimitFlag)); err != nil {
		return usageError{err}
	}
	if c.Bool("daemon") && os.Getenv(readyFDEnv) == "" {
		return startDaemon(c, point)
	}
	ready := readyReporter()
	err = serveMount(c, point, ready)
	if err != nil {
		ready(err)
	}
	return err
}

// readyReporter returns the function that tells a waiting parent how the
// mount went (a no-op in the foreground).
func readyReporter() func(error) {
	fdStr := os.Getenv(readyFDEnv)
	if fdStr == "" {
		return func(error) {}
	}
	os.Unsetenv(readyFDEnv)
	fd, err := strconv.Atoi(fdStr)
	if err != nil {
		return func(error) {}
	}
	f := os.NewFile(uintptr(fd), "ready")
	done := false
	return func(err error) {
		if done {
			return
		}
		done = true
		if err == nil {
			fmt.Fprintln(f, "ok")
		} else {
			fmt.Fprintln(f, oneLine(err.Error())) // yaml puts its reason on a later line
		}
		f.Close()
	}
}

func serveMount(c *cli.Context, point string, ready func(error)) error {
	policy, err := loadPolicy(c)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewTextHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelInfo}))
	stopLimit, err := startMemoryLimit(c.String(memoryLimitFlag), c.IsSet(memoryLimitFlag), log)
	if err != nil {
		return err
	}
	defer stopLimit()
	if dir, err := filepath.Abs(c.String("store")); err == nil && releaseKilledDaemon(point, dir) {
		log.Warn("aborted the mount of a killed daemon that could not exit", "mountpoint", point)
	}
	s, err := store.Open(c.String("store"), store.Options{
		Policy: policy, Logger: log,
		TrackReads:        []string{instructions.Scope}, // the telemetry of .stats
		HotFirstScopes:    []string{instructions.Scope}, // never evicted by other reads
		CheckpointChanges: checkpointChanges(),
	})
	if err != nil {
		return err
	}
	defer s.Close()
	var guard *instructions.Guard
	if c.Bool("seed") {
		if _, ok := policy.Scope(instructions.Scope); !ok {
			return fmt.Errorf("--seed: the policy has no %q scope", instructions.Scope)
		}
		actions, err := instructions.Seed(s, false)
		if err != nil {
			return fmt.Errorf("--seed: %w", err)
		}
		for _, a := range actions {
			log.Info("seed", "key", a.Key, "version", a.Version, "did", a.Did, "reason", a.Reason)
		}
		guard = instructions.StartGuard(s, log)
		defer guard.Stop()
	}
	backend := api.Local{Store: s, Guard: guard}
	fsOpts := fs.Options{
		UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
		ReadOnly: c.Bool("read-only"), Logger: log,
		Stats: func() (any, error) { return backend.Stats(context.Background()) },
	}
	if guard != nil {
		fsOpts.Heal = guard.Heal
	}
	// Catch SIGINT/SIGTERM before the mount exists: one that came between
	// the mount and signal.Notify would kill us and leave a dead mount.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
	m, err := fs.MountStore(point, s, fs.MountConfig{
		Options:    fsOpts,
		AllowOther: c.Bool("allow-other"),
		Debug:      c.Bool("debug"),
	})
	if err != nil {
		return err
	}
	admin, err := api.ServeAdmin(s.Dir(), settled{backend, m.Settle}, log)
	if err != nil {
		m.Unmount()
		return err
	}
	defer admin.Close()
	log.Info("mounted", "mountpoint", point, "store", s.Dir(), "pid", os.Getpid(), "admin_socket", api.SocketPath(s.Dir()),
		"new_blob_durability", s.NameDurability())
	startPprof(log)
	ready(nil)

	stopPruner := startPruner(s, log)
	defer stopPruner()

	served := make(chan struct{})
	go func() { m.Wait(); close(served) }()
	for {
		select {
		case <-served: // unmounted from outside (umount, fusermount -u)
			log.Info("unmounted", "mountpoint", point)
			return nil
		case sig := <-sigs:
			log.Info("stopping", "signal", sig.String())
			if err := m.Unmount(); err != nil {
				// Busy: keep serving rather than leave a dead mount behind.
				log.Error("cannot unmount; still serving", "err", err)
				continue
			}
			<-served
			log.Info("unmounted", "mountpoint", point)
			return nil
		}
	}
}

// settled is the admin socket's backend: a command that changed the store
// gets its answer only once the kernel was told (see fs.Mount.Settle), so
// that the change shows through the mount as soon as the command returns.
type settled struct {
	api.Backend
	settle func()
}

func (b settled) Put(ctx context.Context, scope, key string, body io.Reader, o api.PutOptions) (api.Entry, error) {
	e, err := b.Backend.Put(ctx, scope, key, body, o)
	b.settle()
	return e, err
}

func (b settled) Seed(ctx context.Context, force bool) ([]instructions.Action, error) {
	a, err := b.Backend.Seed(ctx, force)
	b.settle()
	return a, err
}

func (b settled) Delete(ctx context.Context, scope, key string) error {
	err := b.Backend.Delete(ctx, scope, key)
	b.settle()
	return err
}

func (b settled) Prune(ctx context.Context) (store.PruneResult, error) {
	r, err := b.Backend.Prune(ctx)
	b.settle()
	return r, err
}

func (b settled) Clear(ctx context.Context, scope string) (int, error) {
	n, err := b.Backend.Clear(ctx, scope)
	b.settle()
	return n, err
}

func (b settled) Fsck(ctx context.Context, repair bool) (*store.FsckReport, error) {
	r, err := b.Backend.Fsck(ctx, repair)
	if repair {
		b.settle()
	}
	return r, err
}

// startPruner reclaims expired entries in the background. Lookups already
// hide them the instant they expire; this returns their space. (The full
// sweep of unreferenced files runs when the store opens and on `prune`.)
func startPruner(s *store.Store, log *slog.Logger) (stop func()) {
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		t := time.NewTicker(time.Minute)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				r, err := s.PruneExpired()
				if err != nil {
					log.Warn("background prune failed", "err", err)
				} else if r.Entries > 0 {
					log.Info("pruned", "expired_entries", r.Entries, "bytes", r.Bytes)
				}
			}
		}
	}()
	return func() { close(done); <-stopped }
}

// startDaemon re-executes the mount in its own session with output to a log
// file, and waits until the child reports that the mount answers (exit 0)
// or why it failed (exit 1).
func startDaemon(c *cli.Context, point string) error {
	storeDir, err := filepath.Abs(c.String("store"))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(storeDir, 0o700); err != nil {
		return err
	}
	logPath := filepath.Join(storeDir, "daemon.log")
	logf, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	args := []string{"--store", storeDir}
	if cfg := c.String("config"); cfg != "" {
		if cfg, err = filepath.Abs(cfg); err != nil {
			return err
		}
		args = append(args, "--config", cfg)
	}
	args = append(args, "mount", point)
	for _, f := range []string{"seed", "read-only", "allow-other", "debug"} {
		if c.Bool(f) {
			args = append(args, "--"+f)
		}
	}
	if c.IsSet(memoryLimitFlag) {
		args = append(args, "--"+memoryLimitFlag, c.String(memoryLimitFlag))
	}
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), readyFDEnv+"=3")
	cmd.ExtraFiles = []*os.File{pw}
	cmd.Stdin = nil
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	cmd.Dir = "/"
	if err := cmd.Start(); err != nil {
		pw.Close()
		return err
	}
	pw.Close()
	pid := cmd.Process.Pid
	_ = cmd.Process.Release()
	line, err := bufio.NewReader(pr).ReadString('\n')
	line = strings.TrimSpace(line)
	switch {
	case line == "ok":
		fmt.Fprintf(c.App.Writer, "mounted %s (daemon pid %d, log %s)\n", point, pid, logPath)
		return nil
	case line != "":
		return fmt.Errorf("mount failed: %s (log: %s)", line, logPath)
	case errors.Is(err, io.EOF):
		return fmt.Errorf("mount failed: the daemon exited without a word (log: %s)", logPath)
	default:
		return fmt.Errorf("mount failed: %v (log: %s)", err, logPath)
	}
}

// cmdUnmount unmounts and waits for the daemon to let go of the store. A
// busy mount fails at once and keeps being served, unless --lazy detaches
// it. A mount it may not unmount itself is left to its daemon (SIGTERM); a
// dead mount, or one whose daemon does not answer, is detached lazily.
func cmdUnmount(c *cli.Context) error {
	if err := wantArgs(c, 0, 1); err != nil {
		return err
	}
	point, err := mountPoint(c)
	if err != nil {
		return err
	}
	if releaseKilledDaemon(point, "") {
		if _, still := fs.FindMount(point); still {
			if err := fs.LazyUnmount(point); err != nil {
				return err
			}
		}
		fmt.Fprintf(c.App.Writer, "cleared dead mount %s\n", point)
		return nil
	}
	if _, err := os.Stat(point); errors.Is(err, syscall.ENOTCONN) || (err == nil && fs.IsDeadMount(point)) {
		if err := fs.LazyUnmount(point); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "cleared dead mount %s\n", point)
		return nil
	}
	mi, ok := fs.FindMount(point)
	if !ok {
		return fmt.Errorf("%s is not mounted", point)
	}
	if mi.Type != fs.FSType {
		return fmt.Errorf("%s is a %s mount, not iriskvfs", point, mi.Type)
	}
	pid, held := store.LockHolder(mi.Source)
	// Unmount it here first: a busy mount is refused at once, with its
	// reason, and goes on being served; a mount that goes ends its daemon.
	err = fs.Unmount(point)
	switch {
	case err == nil:
		if held && pid > 0 && !waitReleased(mi.Source, pid, 10*time.Second) {
			return fmt.Errorf("unmounted %s, but its daemon (pid %d) still holds the store %s after 10s", point, pid, mi.Source)
		}
		fmt.Fprintf(c.App.Writer, "unmounted %s\n", point)
		return nil
	case errors.Is(err, syscall.EBUSY) && c.Bool("lazy"):
		if err := fs.LazyUnmount(point); err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "detached %s lazily: its daemon exits once no process uses it\n", point)
		return nil
	case errors.Is(err, syscall.EBUSY):
		return fmt.Errorf("cannot unmount %s: it is busy (a process has its working directory or a file open in it: fuser -vm %s); still mounted and served (--lazy detaches it now)", point, point)
	}
	// Not ours to unmount (another user's mount, say): ask its daemon.
	if held && pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				// Gone, and the daemon has let go of the store (and of its
				// admin socket): the next command may open it at once.
				_, still := fs.FindMount(point)
				if holder, held := store.LockHolder(mi.Source); !still && (!held || holder != pid) {
					fmt.Fprintf(c.App.Writer, "unmounted %s\n", point)
					return nil
				}
				time.Sleep(50 * time.Millisecond)
			}
			return fmt.Errorf("daemon (pid %d) did not unmount %s in 10s: is the mount busy? (lsof +f -- %s)", pid, point, point)
		}
	}
	if err := fs.LazyUnmount(point); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "detached %s (no daemon answered)\n", point)
	return nil
}

// waitReleased waits until the daemon pid has let go of the store in dir
// (and of its admin socket), so that the next command may open it at once.
func waitReleased(dir string, pid int, timeout time.Duration) bool {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if holder, held := store.LockHolder(dir); !held || holder != pid {
			return true
		}
	}
	return false
}

// releaseKilledDaemon frees the iriskvfs mount at point (of the store in
// storeDir, or of any store for "") from a daemon that was killed but
// cannot finish dying: a thread of it is stuck in the kernel on the mount
// itself, and it keeps the store locked and the mount hung (see
// fs.AbortConnection). It aborts the mount's connection, which lets the
// daemon go, and waits for the store's lock; it reports whether it did.
func releaseKilledDaemon(point, storeDir string) bool {
	mi, ok := fs.FindMount(point)
	if !ok || mi.Type != fs.FSType || (storeDir != "" && filepath.Clean(mi.Source) != filepath.Clean(storeDir)) {
		return false
	}
	pid, held := store.LockHolder(mi.Source)
	if !held || !dying(pid) {
		return false
	}
	if err := fs.AbortConnection(point); err != nil {
		return false
	}
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if holder, held := store.LockHolder(mi.Source); !held || holder != pid {
			break
		}
	}
	return true
}

// dying reports whether pid was killed (SIGKILL pending) or its main
// thread has exited (a zombie) while other threads live on.
func dying(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		name, val, _ := strings.Cut(line, ":")
		val = strings.TrimSpace(val)
		switch name {
		case "State":
			if strings.HasPrefix(val, "Z") {
				return true
			}
		case "SigPnd", "ShdPnd":
			if m, err := strconv.ParseUint(val, 16, 64); err == nil && m&(1<<(syscall.SIGKILL-1)) != 0 {
				return true
			}
		}
	}
	return false
}
