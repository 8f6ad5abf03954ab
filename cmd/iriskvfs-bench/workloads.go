package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"
)

// openReadClose opens path, reads it to EOF with buf, and closes it,
// iters times; it returns the mean time per iteration.
func openReadClose(path string, iters int, buf []byte) (time.Duration, error) {
	t0 := time.Now()
	for i := 0; i < iters; i++ {
		fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return 0, &os.PathError{Op: "open", Path: path, Err: err}
		}
		for {
			n, err := syscall.Read(fd, buf)
			if err == syscall.EINTR {
				continue
			}
			if err != nil {
				syscall.Close(fd)
				return 0, &os.PathError{Op: "read", Path: path, Err: err}
			}
			if n == 0 {
				break
			}
		}
		if err := syscall.Close(fd); err != nil {
			return 0, &os.PathError{Op: "close", Path: path, Err: err}
		}
	}
	return time.Since(t0) / time.Duration(iters), nil
}

// checkContent reads path and compares it with want.
func checkContent(path string, want []byte) error {
	got, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%s: read %d bytes that differ from the %d expected", path, len(got), len(want))
	}
	return nil
}

// catOnce runs /bin/cat path > /dev/null and returns how long it took,
// fork/exec and wait included.
func catOnce(path string, devnull *os.File) (time.Duration, error) {
	cmd := exec.Command("/bin/cat", path)
	cmd.Stdout = devnull
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("cat %s: %w", path, err)
	}
	return d, nil
}

// catInterleaved runs n rounds of one cat per path, in a freshly shuffled
// order each round (so that load drift and the leftovers of the previous
// cat are shared fairly), and returns each path's median. A path whose cat
// fails gets its error and is left out of later rounds.
func catInterleaved(paths []string, n int, devnull *os.File, shuffle func(int, func(i, j int))) ([]time.Duration, []error) {
	times := make([][]time.Duration, len(paths))
	errs := make([]error, len(paths))
	order := make([]int, len(paths))
	for i := range order {
		order[i] = i
	}
	for r := 0; r < n; r++ {
		shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, p := range order {
			if errs[p] != nil {
				continue
			}
			d, err := catOnce(paths[p], devnull)
			if err != nil {
				errs[p] = err
				continue
			}
			times[p] = append(times[p], d)
		}
	}
	med := make([]time.Duration, len(paths))
	for i, t := range times {
		if errs[i] == nil && len(t) > 0 {
			med[i] = medianDuration(t)
		}
	}
	return med, errs
}

// listing is one ls -l equivalent of a directory.
type listing struct {
	total   time.Duration // getdents of the whole directory + lstat of every entry
	entries int
	// index is the lstat of _index.json alone (iriskvfs generates the
	// scope's index to size it), part of total.
	index time.Duration
}

// lsl lists dir with getdents64 (32 KiB buffer, as ls uses) and lstats
// every entry by its path, as ls -l does.
func lsl(dir string) (listing, error) {
	var l listing
	t0 := time.Now()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return l, &os.PathError{Op: "open", Path: dir, Err: err}
	}
	buf := make([]byte, 32<<10)
	names := make([]string, 0, 1<<17)
	for {
		n, err := syscall.Getdents(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			syscall.Close(fd)
			return l, &os.PathError{Op: "getdents", Path: dir, Err: err}
		}
		if n <= 0 {
			break
		}
		_, _, names = syscall.ParseDirent(buf[:n], -1, names)
	}
	syscall.Close(fd)
	var st syscall.Stat_t
	for _, name := range names {
		p := dir + "/" + name
		var ti time.Time
		if name == "_index.json" {
			ti = time.Now()
		}
		if err := syscall.Lstat(p, &st); err != nil {
			return l, &os.PathError{Op: "lstat", Path: p, Err: err}
		}
		if name == "_index.json" {
			l.index = time.Since(ti)
		}
	}
	l.total = time.Since(t0)
	l.entries = len(names)
	return l, nil
}

// lsProcess runs `ls -l dir > /dev/null` (C locale) and returns its time.
func lsProcess(dir string, devnull *os.File) (time.Duration, error) {
	cmd := exec.Command("ls", "-l", dir)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	cmd.Stdout = devnull
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	t0 := time.Now()
	err := cmd.Run()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("ls -l %s: %w: %s", dir, err, stderr.String())
	}
	return d, nil
}

// seqRead reads path from start to end with buf and returns MB/s
// (10^6 bytes per second).
func seqRead(path string, size int64, buf []byte) (float64, error) {
	t0 := time.Now()
	fd, err := syscall.Open(path, syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		return 0, &os.PathError{Op: "open", Path: path, Err: err}
	}
	var total int64
	for {
		n, err := syscall.Read(fd, buf)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			syscall.Close(fd)
			return 0, &os.PathError{Op: "read", Path: path, Err: err}
		}
		if n == 0 {
			break
		}
		total += int64(n)
	}
	syscall.Close(fd)
	d := time.Since(t0)
	if total != size {
		return 0, fmt.Errorf("%s: read %d bytes, want %d", path, total, size)
	}
	return float64(size) / 1e6 / d.Seconds(), nil
}

// createWrite is a new value through the mount: open(O_CREAT|O_EXCL),
// write, close (which publishes it durably; its error counts).
func createWrite(path string, data []byte) error {
	fd, err := syscall.Open(path, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "open", Path: path, Err: err}
	}
	if _, err := syscall.Write(fd, data); err != nil {
		syscall.Close(fd)
		return &os.PathError{Op: "write", Path: path, Err: err}
	}
	if err := syscall.Close(fd); err != nil {
		return &os.PathError{Op: "close", Path: path, Err: err}
	}
	return nil
}

// nativeDurable is a new file on the disk, durably: write a temporary
// file, fsync, close, rename it into dir; with syncDir also fsync dir, so
// that the rename itself survives a crash (what a store put guarantees).
func nativeDurable(tmpDir, dir, name string, data []byte, syncDir bool) error {
	tmp := filepath.Join(tmpDir, name+".tmp")
	fd, err := syscall.Open(tmp, syscall.O_WRONLY|syscall.O_CREAT|syscall.O_EXCL|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return &os.PathError{Op: "open", Path: tmp, Err: err}
	}
	if _, err := syscall.Write(fd, data); err != nil {
		syscall.Close(fd)
		return err
	}
	if err := syscall.Fsync(fd); err != nil {
		syscall.Close(fd)
		return err
	}
	if err := syscall.Close(fd); err != nil {
		return err
	}
	if err := syscall.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	if syncDir {
		dfd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY|syscall.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		err = syscall.Fsync(dfd)
		syscall.Close(dfd)
		return err
	}
	return nil
}
