package main

import (
	"bufio"
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
				&cli.BoolFlag{Name: "seed", Usage: "write the canonical instruction sets at mount time"},
				&cli.BoolFlag{Name: "allow-other", Usage: "let other users use the mount (adds default_permissions)"},
				&cli.BoolFlag{Name: "read-only", Usage: "refuse every change through the mount"},
				&cli.BoolFlag{Name: "debug", Usage: "log every FUSE request"},
			},
			Action: cmdMount,
		},
		{Name: "unmount", Aliases: []string{"umount"}, Usage: "stop the daemon and unmount", ArgsUsage: "[MOUNTPOINT]", Action: cmdUnmount},
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
	if c.Bool("seed") {
		return errors.New("--seed: the canonical instruction sets are not built yet (issue 4)")
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
			fmt.Fprintln(f, firstLine(err.Error()))
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
	s, err := store.Open(c.String("store"), store.Options{Policy: policy, Logger: log})
	if err != nil {
		return err
	}
	defer s.Close()
	m, err := fs.MountStore(point, s, fs.MountConfig{
		Options: fs.Options{
			UID: uint32(os.Getuid()), GID: uint32(os.Getgid()),
			ReadOnly: c.Bool("read-only"), Logger: log,
		},
		AllowOther: c.Bool("allow-other"),
		Debug:      c.Bool("debug"),
	})
	if err != nil {
		return err
	}
	admin, err := api.ServeAdmin(s.Dir(), api.Local{Store: s}, log)
	if err != nil {
		m.Unmount()
		return err
	}
	defer admin.Close()
	log.Info("mounted", "mountpoint", point, "store", s.Dir(), "pid", os.Getpid(), "admin_socket", api.SocketPath(s.Dir()))
	ready(nil)

	stopPruner := startPruner(s, log)
	defer stopPruner()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)
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
	for _, f := range []string{"read-only", "allow-other", "debug"} {
		if c.Bool(f) {
			args = append(args, "--"+f)
		}
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

// cmdUnmount asks the daemon serving the mount to stop (SIGTERM to the
// store's lock holder) and waits for the mount to go; a dead mount, or one
// whose daemon does not answer, is detached lazily.
func cmdUnmount(c *cli.Context) error {
	if err := wantArgs(c, 0, 1); err != nil {
		return err
	}
	point, err := mountPoint(c)
	if err != nil {
		return err
	}
	if _, err := os.Stat(point); errors.Is(err, syscall.ENOTCONN) {
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
	if pid, held := store.LockHolder(mi.Source); held && pid > 0 {
		if err := syscall.Kill(pid, syscall.SIGTERM); err == nil {
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) {
				if _, still := fs.FindMount(point); !still {
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
