package main

import (
	"fmt"
	"io"
	"os"
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
// operation of each kind.
func (b *bench) countRoundTrips() error {
	sz := b.o.sz
	logPath := filepath.Join(b.fx.storeDir, "daemon.log")
	if err := os.Truncate(logPath, 0); err != nil && !os.IsNotExist(err) {
		return err
	}
	d, err := b.mount(true)
	if err != nil {
		return err
	}
	b.res.rtMount = d
	b.settle(20 * time.Second)
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	measure := func(label string, fn func() error) error {
		time.Sleep(300 * time.Millisecond) // what earlier operations left (RELEASE is asynchronous)
		fi, err := os.Stat(logPath)
		if err != nil {
			return err
		}
		if err := fn(); err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		f, err := os.Open(logPath)
		if err != nil {
			return err
		}
		defer f.Close()
		data, err := io.ReadAll(io.NewSectionReader(f, fi.Size(), 1<<40))
		if err != nil {
			return err
		}
		c := countRequests(string(data))
		c.label = label
		b.res.rt = append(b.res.rt, c)
		return nil
	}
	buf := make([]byte, 64<<10)
	big := make([]byte, 1<<20)
	hot := b.fusePath(hotScope, hotKey)
	orc := func() error { _, err := openReadClose(hot, 1, buf); return err }
	warmHot := func() error { _, err := openReadClose(hot, 10, buf); return err }
	warmCat := func() error {
		for i := 0; i < 2; i++ {
			if _, err := catOnce(hot, devnull); err != nil {
				return err
			}
		}
		return nil
	}
	list := func() error { _, err := lsl(filepath.Join(b.mnt, listScope)); return err }
	readBig := func() error { _, err := seqRead(b.fusePath(bigScope, bigKeyA), sz.bigSize, big); return err }
	steps := []struct {
		label string
		warm  func() error // run first, not counted
		fn    func() error
	}{
		{"open+read+close 20 KB, first after the mount", nil, orc},
		{"open+read+close 20 KB, second", nil, orc},
		{"open+read+close 20 KB, hot (after 10 more)", warmHot, orc},
		{"cat 20 KB as a process, hot (after 2 more)", warmCat, func() error { _, err := catOnce(hot, devnull); return err }},
		{fmt.Sprintf("getdents+lstat of %d keys, first after the mount", sz.keys), nil, list},
		{fmt.Sprintf("getdents+lstat of %d keys, second", sz.keys), nil, list},
		{fmt.Sprintf("ls -l process of %d keys (after the two listings)", sz.keys), nil, func() error {
			_, err := lsProcess(filepath.Join(b.mnt, listScope), devnull)
			return err
		}},
		{fmt.Sprintf("%d MB read, first after the mount", sz.bigSize>>20), nil, readBig},
		{fmt.Sprintf("%d MB read, repeat", sz.bigSize>>20), nil, readBig},
		{"create+write+close 4 KB, new key (after one other)", func() error {
			return createWrite(b.fusePath(writeScope, "rt-write-0"), make([]byte, sz.writeSize))
		}, func() error {
			return createWrite(b.fusePath(writeScope, "rt-write-1"), make([]byte, sz.writeSize))
		}},
	}
	for _, s := range steps {
		if s.warm != nil {
			if err := s.warm(); err != nil {
				return fmt.Errorf("%s: %w", s.label, err)
			}
		}
		if err := measure(s.label, s.fn); err != nil {
			return fmt.Errorf("%s: %w", s.label, err)
		}
	}
	if _, err := b.unmount(); err != nil {
		return err
	}
	// Keep the log for inspection.
	keep := filepath.Join(b.o.dir, "rt-debug.log")
	if err := os.Rename(logPath, keep); err == nil {
		fmt.Printf("the debug log is in %s\n", keep)
	}
	return nil
}
