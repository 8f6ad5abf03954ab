package main

import (
	"bufio"
	"debug/buildinfo"
	"fmt"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// machine describes where the benchmark ran.
type machine struct {
	cpus    int
	cpu     string
	kernel  string
	goVer   string
	goFuse  string
	memGB   float64
	hostTag string
}

func machineInfo(bin string) machine {
	m := machine{cpus: runtime.NumCPU(), goVer: runtime.Version(), cpu: "?", kernel: "?", goFuse: "?"}
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				m.cpu = strings.TrimSpace(v)
				break
			}
		}
		f.Close()
	}
	var u unix.Utsname
	if unix.Uname(&u) == nil {
		m.kernel = unix.ByteSliceToString(u.Release[:])
		m.hostTag = unix.ByteSliceToString(u.Machine[:])
	}
	// The go-fuse the daemon was built with (this program does not link it).
	if bi, err := buildinfo.ReadFile(bin); err == nil {
		for _, d := range bi.Deps {
			if d.Path == "github.com/hanwen/go-fuse/v2" {
				m.goFuse = d.Version
			}
		}
	}
	var si syscall.Sysinfo_t
	if syscall.Sysinfo(&si) == nil {
		m.memGB = float64(si.Totalram) * float64(si.Unit) / (1 << 30)
	}
	return m
}

func (m machine) oneLine() string {
	return fmt.Sprintf("%d CPU (%s), %.0f GiB, Linux %s %s, %s, go-fuse %s", m.cpus, m.cpu, m.memGB, m.kernel, m.hostTag, m.goVer, m.goFuse)
}

// fsType is the type of the filesystem holding path ("tmpfs", "ext4", ...),
// from the longest matching mount point.
func fsType(path string) string {
	best, typ := -1, "?"
	for _, mi := range mounts() {
		p := mi[0]
		if (path == p || strings.HasPrefix(path, strings.TrimSuffix(p, "/")+"/")) && len(p) > best {
			best, typ = len(p), mi[1]
		}
	}
	return typ
}

// mountedType reports whether something is mounted exactly at point.
func mountedType(point string) (string, bool) {
	typ, ok := "", false
	for _, mi := range mounts() {
		if mi[0] == point {
			typ, ok = mi[1], true // the last one is on top
		}
	}
	return typ, ok
}

// mounts lists (mount point, type) from /proc/self/mountinfo.
func mounts() [][2]string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var out [][2]string
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		for i := 6; i < len(fields)-1; i++ {
			if fields[i] == "-" && len(fields) > 4 {
				out = append(out, [2]string{unescapeOctal(fields[4]), fields[i+1]})
				break
			}
		}
	}
	return out
}

func unescapeOctal(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func sameDevice(a, b string) bool {
	var sa, sb syscall.Stat_t
	if syscall.Stat(a, &sa) != nil || syscall.Stat(b, &sb) != nil {
		return false
	}
	return sa.Dev == sb.Dev
}

// loadavg is the first three fields of /proc/loadavg.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

func load1() float64 {
	v, _ := strconv.ParseFloat(strings.Fields(loadavg() + " ")[0], 64)
	return v
}

// dropSlab is the count of drop_caches runs (slab) from /proc/vmstat: if it
// moves during the run, someone emptied the kernel's caches, FUSE ones
// included, and "warm" figures are not warm.
func dropSlab() int64 {
	f, err := os.Open("/proc/vmstat")
	if err != nil {
		return -1
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "drop_slab "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

// cpuTicks is a process's user+system CPU time in clock ticks.
func cpuTicks(pid int) (int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	f := strings.Fields(s[i+1:])
	// After the command: state(0) ppid(1) ... utime(11) stime(12).
	if len(f) < 13 {
		return 0, fmt.Errorf("bad /proc/%d/stat", pid)
	}
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st, nil
}

// memKB reads VmRSS and VmHWM (kB) of a process.
func memKB(pid int) (rss, hwm int64, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		for _, p := range []struct {
			name string
			v    *int64
		}{{"VmRSS:", &rss}, {"VmHWM:", &hwm}} {
			if v, ok := strings.CutPrefix(line, p.name); ok {
				fields := strings.Fields(v)
				if len(fields) > 0 {
					*p.v, _ = strconv.ParseInt(fields[0], 10, 64)
				}
			}
		}
	}
	return rss, hwm, sc.Err()
}

// dropFileCache evicts one file's clean pages from the page cache (not the
// whole machine's, as drop_caches would).
func dropFileCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// readAheadKB is the read_ahead_kb of the backing device info of the
// filesystem mounted at point.
func readAheadKB(point string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(point, &st); err != nil {
		return "?"
	}
	b, err := os.ReadFile(fmt.Sprintf("/sys/class/bdi/%d:%d/read_ahead_kb", unix.Major(st.Dev), unix.Minor(st.Dev)))
	if err != nil {
		return "?"
	}
	return strings.TrimSpace(string(b))
}

// dropCaches writes back dirty data and drops the kernel's page cache,
// dentries and inodes (echo 3 > /proc/sys/vm/drop_caches), FUSE ones
// included.
func dropCaches() error {
	unix.Sync()
	return os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0o200)
}
