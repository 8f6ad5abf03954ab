package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"
)

// rtCount is the FUSE requests one operation made, from go-fuse's debug log.
type rtCount struct {
	label   string
	counts  map[string]int
	total   int
	readAvg int64 // mean READ size in bytes, when there were READs
	// passthrough counts OPEN replies that attached a backing file (FUSE
	// passthrough: the kernel reads the blob itself, no READ requests).
	passthrough int
}

func (c rtCount) String() string {
	if c.total == 0 {
		return "0"
	}
	ops := make([]string, 0, len(c.counts))
	for op := range c.counts {
		ops = append(ops, op)
	}
	sort.Slice(ops, func(i, j int) bool {
		if c.counts[ops[i]] != c.counts[ops[j]] {
			return c.counts[ops[i]] > c.counts[ops[j]]
		}
		return ops[i] < ops[j]
	})
	parts := make([]string, 0, len(ops))
	for _, op := range ops {
		s := op
		if c.counts[op] > 1 {
			s = fmt.Sprintf("%s×%d", op, c.counts[op])
		}
		if op == "READ" && c.readAvg > 0 {
			s += fmt.Sprintf(" (%d KiB each)", c.readAvg>>10)
		}
		parts = append(parts, s)
	}
	pt := ""
	if c.passthrough > 0 {
		pt = fmt.Sprintf("; %d open(s) answered with PASSTHROUGH", c.passthrough)
	}
	return fmt.Sprintf("%d: %s%s", c.total, strings.Join(parts, ", "), pt)
}

// "rx 12: LOOKUP n1 ..." and, for reads, "READ n5 {Fh 1 [0 +131072) ...".
var (
	rxRE   = regexp.MustCompile(`\brx \d+: ([A-Z_0-9]+)`)
	readRE = regexp.MustCompile(`\+(\d+)\)`)
)

func countRequests(log string) rtCount {
	c := rtCount{counts: map[string]int{}}
	var readBytes, reads int64
	for _, line := range strings.Split(log, "\n") {
		if strings.Contains(line, " tx ") && strings.Contains(line, "PASSTHROUGH") {
			c.passthrough++
		}
		m := rxRE.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		c.counts[m[1]]++
		c.total++
		if m[1] == "READ" {
			if r := readRE.FindStringSubmatch(line); r != nil {
				n, _ := strconv.ParseInt(r[1], 10, 64)
				readBytes += n
				reads++
			}
		}
	}
	if reads > 0 {
		c.readAvg = readBytes / reads
	}
	return c
}

// countRoundTrips mounts the fixture once more with --debug (go-fuse logs
// every request to STORE/daemon.log) and counts the requests behind one
// operation of each kind; then the same for the hot path of the
// --read-only mount.
func (b *bench) countRoundTrips() error {
	sz := b.o.sz
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	buf := make([]byte, 64<<10)
	big := make([]byte, 1<<20)

	type step struct {
		label string
		warm  func() error // run first, not counted
		fn    func() error
	}
	count := func(m *irisMount, steps []step) ([]rtCount, time.Duration, error) {
		logPath := filepath.Join(m.fx.storeDir, "daemon.log")
		if err := os.Truncate(logPath, 0); err != nil && !os.IsNotExist(err) {
			return nil, 0, err
		}
		d, err := m.mount()
		if err != nil {
			return nil, 0, err
		}
		defer m.unmount()
		settle(m.pid, 20*time.Second)
		var out []rtCount
		for _, s := range steps {
			if s.warm != nil {
				if err := s.warm(); err != nil {
					return nil, 0, fmt.Errorf("%s: %w", s.label, err)
				}
			}
			time.Sleep(300 * time.Millisecond) // what earlier operations left (RELEASE is asynchronous)
			fi, err := os.Stat(logPath)
			if err != nil {
				return nil, 0, err
			}
			if err := s.fn(); err != nil {
				return nil, 0, fmt.Errorf("%s: %w", s.label, err)
			}
			time.Sleep(500 * time.Millisecond)
			data, err := readFrom(logPath, fi.Size())
			if err != nil {
				return nil, 0, err
			}
			c := countRequests(data)
			c.label = s.label
			out = append(out, c)
		}
		if _, err := m.unmount(); err != nil {
			return nil, 0, err
		}
		keep := filepath.Join(b.o.dir, "rt-debug-"+filepath.Base(m.mnt)+".log")
		if err := os.Rename(logPath, keep); err == nil {
			fmt.Printf("the debug log is in %s\n", keep)
		}
		return out, d, nil
	}
	hotSteps := func(mnt string) []step {
		hot := filepath.Join(mnt, hotRel)
		orc := func() error { _, err := openReadClose(hot, 1, buf); return err }
		return []step{
			{"open+read+close 20 KB, first after the mount", nil, orc},
			{"open+read+close 20 KB, second", nil, orc},
			{"open+read+close 20 KB, hot (after 10 more)", func() error { _, err := openReadClose(hot, 10, buf); return err }, orc},
			{"cat 20 KB as a process, hot (after 2 more)", func() error {
				for i := 0; i < 2; i++ {
					if _, err := catOnce(hot, devnull); err != nil {
						return err
					}
				}
				return nil
			}, func() error { _, err := catOnce(hot, devnull); return err }},
		}
	}

	rw := b.target(tIris)
	m := &irisMount{bin: b.bin, fx: b.fx, mnt: rw.root, debug: true}
	list := func() error { _, err := lsl(rw.path(listRel)); return err }
	readBig := func() error { _, err := seqRead(rw.path(bigRel), sz.bigSize, big); return err }
	steps := append(hotSteps(rw.root),
		step{fmt.Sprintf("getdents+lstat of %d keys, first after the mount", sz.keys), nil, list},
		step{fmt.Sprintf("getdents+lstat of %d keys, second", sz.keys), nil, list},
		step{fmt.Sprintf("ls -l process of %d keys (after the two listings)", sz.keys), nil, func() error {
			_, err := lsProcess(rw.path(listRel), devnull)
			return err
		}},
		step{fmt.Sprintf("%d MB read, first after the mount", sz.bigSize>>20), nil, readBig},
		step{fmt.Sprintf("%d MB read, repeat", sz.bigSize>>20), nil, readBig},
		step{"create+write+close 4 KB, new key (after one other)", func() error {
			return createWrite(rw.path(writeScope+"/rt-write-0"), make([]byte, sz.writeSize))
		}, func() error {
			return createWrite(rw.path(writeScope+"/rt-write-1"), make([]byte, sz.writeSize))
		}},
		step{"unlink of a key", nil, func() error { return os.Remove(rw.path(writeScope + "/rt-write-0")) }},
	)
	if b.res.rt, b.res.rtMount, err = count(m, steps); err != nil {
		return err
	}
	cmd := exec.Command(b.bin, "--store", b.fx.storeDir, "--config", b.fx.config, "clear", writeScope)
	cmd.Env = childEnv()
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("iriskvfs clear %s: %v: %s", writeScope, err, strings.TrimSpace(string(out)))
	}

	ro := b.target(tIrisRO)
	mro := &irisMount{bin: b.bin, fx: b.fxRO, mnt: ro.root, readOnly: true, debug: true}
	b.res.rtRO, _, err = count(mro, hotSteps(ro.root))
	return err
}

func readFrom(path string, off int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.NewSectionReader(f, off, 1<<40))
	return string(data), err
}
