package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// acquireLock takes an exclusive flock on path and records our pid in it.
// The kernel drops the lock when the process dies, so a SIGKILLed owner
// never leaves the store locked.
func acquireLock(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (pid %s)", ErrLocked, holderPid(path))
		}
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

func holderPid(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "unknown"
	}
	if p := strings.TrimSpace(string(b)); p != "" {
		return p
	}
	return "unknown"
}

// LockHolder returns the pid of the process holding the lock of the store
// in dir, and whether one does. It reads /proc/locks instead of probing the
// lock, so it never gets in the way of a concurrent Open.
func LockHolder(dir string) (pid int, held bool) {
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(dir, lockName), &st); err != nil {
		return 0, false
	}
	locks, err := os.ReadFile("/proc/locks")
	if err != nil {
		return 0, false
	}
	want := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	for _, line := range strings.Split(string(locks), "\n") {
		// 1: FLOCK  ADVISORY  WRITE 1234 fd:01:5678 0 EOF  ("->" marks a waiter)
		f := strings.Fields(line)
		if len(f) < 6 || f[1] != "FLOCK" || f[5] != want {
			continue
		}
		if pid, err := strconv.Atoi(f[4]); err == nil {
			return pid, true
		}
	}
	return 0, false
}
