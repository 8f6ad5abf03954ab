package store

import (
	"errors"
	"fmt"
	"os"
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

// LockHolder returns the pid recorded in the lock of the store in dir, and
// whether that lock is currently held.
func LockHolder(dir string) (pid int, held bool) {
	path := dir + "/" + lockName
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	pid, _ = strconv.Atoi(holderPid(path))
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		return pid, true
	}
	_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
	return pid, false
}
