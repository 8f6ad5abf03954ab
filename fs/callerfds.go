package fs

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// A shell's `cmd > file` opens the file, duplicates the descriptor onto
// the command's output and closes the original before anything is
// written. FUSE sends a FLUSH for every close(), so that first close would
// publish an empty value, durably, and the command's output would need a
// second commit. The file is not closed while a duplicate is open, and
// the kernel does not say whether one is; the caller's /proc entries do.
// This file answers "does the process that sent this FLUSH still have a
// descriptor on this inode of this mount?", reading only /proc (never the
// mount, so it cannot wait on itself).

// mountDevice finds the device number ("major:minor", as mountinfo
// writes it) of the filesystem mounted at point, from this process's
// mountinfo; "" if it cannot tell.
func mountDevice(point string) string {
	abs, err := filepath.Abs(point)
	if err != nil {
		return ""
	}
	if real, err := filepath.EvalSymlinks(abs); err == nil {
		abs = real
	}
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	dev := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		// 36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - fuse.iriskvfs src rw,...
		f := strings.Fields(sc.Text())
		if len(f) < 5 || unescapeMountinfo(f[4]) != abs {
			continue
		}
		dev = f[2] // the last mount on the point is the one on top
	}
	return dev
}

// unescapeMountinfo undoes the octal escapes (\040 for a space) mountinfo
// writes in paths.
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

const maxScannedFds = 256

// callerHolds reports whether process pid has a descriptor open on the
// file with inode number ino on the filesystem with device dev. Any doubt
// (no pid, /proc unreadable, another pid namespace) answers false.
func callerHolds(pid uint32, dev string, ino uint64) bool {
	if pid == 0 || dev == "" {
		return false
	}
	proc := "/proc/" + strconv.FormatUint(uint64(pid), 10)
	d, err := os.Open(proc + "/fdinfo")
	if err != nil {
		return false
	}
	// A close must not cost a process with a huge descriptor table more
	// than a commit would: past maxScannedFds, give up (and publish).
	names, err := d.Readdirnames(maxScannedFds + 1)
	d.Close()
	if err != nil || len(names) > maxScannedFds {
		return false
	}
	want := strconv.FormatUint(ino, 10)
	var mounts []string // mount ids of the descriptors on an inode numbered ino
	buf := make([]byte, 512)
	for _, n := range names {
		mnt, inode, ok := readFdinfo(proc+"/fdinfo/"+n, buf)
		if ok && inode == want {
			mounts = append(mounts, mnt)
		}
	}
	if len(mounts) == 0 {
		return false
	}
	// Inode numbers are per filesystem: the descriptor counts only if its
	// mount (in the caller's namespace) is of this filesystem.
	data, err := os.ReadFile(proc + "/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) < 3 || f[2] != dev {
			continue
		}
		for _, m := range mounts {
			if f[0] == m {
				return true
			}
		}
	}
	return false
}

// readFdinfo reads the mnt_id and ino lines of one /proc/PID/fdinfo/N.
func readFdinfo(path string, buf []byte) (mnt, ino string, ok bool) {
	f, err := os.Open(path)
	if err != nil {
		return "", "", false
	}
	n, _ := f.Read(buf)
	f.Close()
	for _, line := range strings.Split(string(buf[:n]), "\n") {
		k, v, found := strings.Cut(line, ":")
		if !found {
			continue
		}
		switch k {
		case "mnt_id":
			mnt = strings.TrimSpace(v)
		case "ino":
			ino = strings.TrimSpace(v)
		}
	}
	return mnt, ino, mnt != "" && ino != ""
}
