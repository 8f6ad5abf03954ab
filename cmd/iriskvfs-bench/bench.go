package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// bench is one run.
type bench struct {
	o   *options
	bin string
	mnt string
	fx  *fixture
	nat *native
	res *results
	rng *rand.Rand

	pid     int  // the daemon mounted now, 0 if none
	cleaned bool // the unmount cleanup is registered
}

// results holds every figure of every repetition, by metric name.
type results struct {
	vals                 map[string][]float64
	started              time.Time
	elapsed              time.Duration
	loadStart, loadEnd   string
	loads                []float64
	slabStart, slabEnd   int64
	readAhead            string
	listEntries          int
	hotEntries, hotBytes int64
	rt                   []rtCount
	rtMount              time.Duration
}

func newResults() *results { return &results{vals: map[string][]float64{}} }

func (r *results) add(name string, v float64) { r.vals[name] = append(r.vals[name], v) }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

var pidRE = regexp.MustCompile(`daemon pid (\d+)`)

// mount starts `iriskvfs mount --daemon` on the fixture and returns once
// it does (the daemon has answered a request through the mount).
func (b *bench) mount(debug bool) (time.Duration, error) {
	if !b.cleaned {
		cleanup.add(b.forceUnmount)
		b.cleaned = true
	}
	args := []string{"--store", b.fx.storeDir, "--config", b.fx.config, "mount", "--daemon"}
	if debug {
		args = append(args, "--debug")
	}
	args = append(args, b.mnt)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin, args...)
	cmd.Env = childEnv()
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("iriskvfs %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	m := pidRE.FindSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no daemon pid in %q", out)
	}
	b.pid, _ = strconv.Atoi(string(m[1]))
	return d, nil
}

// unmount runs `iriskvfs unmount`, which stops the daemon and waits for
// the mount to go and the store to be released.
func (b *bench) unmount() (time.Duration, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.bin, "unmount", b.mnt)
	cmd.Env = childEnv()
	t0 := time.Now()
	out, err := cmd.CombinedOutput()
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("iriskvfs unmount %s: %w: %s", b.mnt, err, strings.TrimSpace(string(out)))
	}
	b.pid = 0
	return d, nil
}

// forceUnmount is the cleanup: whatever state the mount is in, it goes,
// and the daemon this run started stops.
func (b *bench) forceUnmount() {
	if t, ok := mountedType(b.mnt); ok {
		if _, err := b.unmount(); err != nil {
			fmt.Fprintf(os.Stderr, "%v; detaching %s\n", err, b.mnt)
			if t == "fuse.iriskvfs" {
				_ = syscall.Unmount(b.mnt, syscall.MNT_FORCE) // aborts the connection
			}
			_ = syscall.Unmount(b.mnt, syscall.MNT_DETACH)
		}
	}
	if b.pid > 0 {
		pid := b.pid
		b.pid = 0
		if syscall.Kill(pid, 0) == nil {
			_ = syscall.Kill(pid, syscall.SIGTERM)
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(50 * time.Millisecond)
			}
			if syscall.Kill(pid, 0) == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// settle waits until the daemon is idle (under 5 % of a CPU over 200 ms;
// the store sweeps its blob files in the background after it opens), at
// most max, and returns how long that took.
func (b *bench) settle(max time.Duration) time.Duration {
	const step = 200 * time.Millisecond
	t0 := time.Now()
	prev, err := cpuTicks(b.pid)
	if err != nil {
		return 0
	}
	for time.Since(t0) < max {
		time.Sleep(step)
		cur, err := cpuTicks(b.pid)
		if err != nil {
			break
		}
		if cur-prev <= 1 { // clock ticks are 10 ms
			return time.Since(t0) - step
		}
		prev = cur
	}
	return time.Since(t0)
}

func (b *bench) fusePath(scope, key string) string { return filepath.Join(b.mnt, scope, key) }

// both runs the native and the iriskvfs side of a measurement, native first
// on even repetitions and iriskvfs first on odd ones.
func both(nativeFirst bool, nat, fuse func() error) error {
	first, second := nat, fuse
	if !nativeFirst {
		first, second = fuse, nat
	}
	if err := first(); err != nil {
		return err
	}
	return second()
}

func (b *bench) rep(r int) error {
	sz := b.o.sz
	res := b.res
	nativeFirst := r%2 == 0
	res.loads = append(res.loads, load1())
	big := make([]byte, 1<<20)

	// The host page cache: artifact A's blob cached (the first read through
	// the mount then costs the verification and the copy through the
	// daemon), artifact B's evicted (it costs the disk too).
	if _, err := seqRead(b.fx.blobA, sz.bigSize, big); err != nil {
		return err
	}
	if err := dropFileCache(b.fx.blobB); err != nil {
		return err
	}

	// 6. Mount time with 100k keys.
	d, err := b.mount(false)
	if err != nil {
		return err
	}
	res.add("mount", ms(d))
	res.add("settle", ms(b.settle(20*time.Second)))
	if res.readAhead == "" {
		res.readAhead = readAheadKB(b.mnt)
	}
	rss, _, err := memKB(b.pid)
	if err != nil {
		return err
	}
	res.add("rss.mount", float64(rss)/1024)

	// 4. ls -l equivalent of 100k keys: first listing after the mount,
	// then a second one; then ls -l itself.
	fuseList := filepath.Join(b.mnt, listScope)
	var nl, fl listing
	for _, pass := range []string{"1", "2"} {
		err := both(nativeFirst,
			func() (err error) { nl, err = lsl(b.nat.listDir); return },
			func() (err error) { fl, err = lsl(fuseList); return })
		if err != nil {
			return err
		}
		if nl.entries != sz.keys || fl.entries != sz.keys+1 { // + _index.json
			return fmt.Errorf("listed %d native and %d iriskvfs entries, want %d and %d", nl.entries, fl.entries, sz.keys, sz.keys+1)
		}
		res.listEntries = fl.entries
		res.add("ls.tmpfs."+pass, ms(nl.total))
		res.add("ls.fuse."+pass, ms(fl.total))
		res.add("ls.fuse.index."+pass, ms(fl.index))
		res.add("ls.fuse.noindex."+pass, ms(fl.total-fl.index))
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	var nd, fd time.Duration
	err = both(nativeFirst,
		func() (err error) { nd, err = lsProcess(b.nat.listDir, devnull); return },
		func() (err error) { fd, err = lsProcess(fuseList, devnull); return })
	if err != nil {
		return err
	}
	res.add("lsproc.tmpfs", ms(nd))
	res.add("lsproc.fuse", ms(fd))
	if rss, _, err = memKB(b.pid); err != nil {
		return err
	}
	res.add("rss.listing", float64(rss)/1024)

	// 1. Hot small read: open+read+close of the 20 KB file in a loop.
	fuseHot := b.fusePath(hotScope, hotKey)
	for _, p := range []string{b.nat.hot, fuseHot} {
		if err := checkContent(p, b.fx.hot); err != nil {
			return err
		}
	}
	buf := make([]byte, 64<<10)
	err = both(nativeFirst,
		func() error { _, err := openReadClose(b.nat.hot, sz.hotWarm, buf); return err },
		func() error { _, err := openReadClose(fuseHot, sz.hotWarm, buf); return err })
	if err != nil {
		return err
	}
	err = both(nativeFirst,
		func() (err error) { nd, err = openReadClose(b.nat.hot, sz.hotIters, buf); return },
		func() (err error) { fd, err = openReadClose(fuseHot, sz.hotIters, buf); return })
	if err != nil {
		return err
	}
	res.add("orc.tmpfs", us(nd))
	res.add("orc.fuse", us(fd))

	// 2. cat of it as a process, interleaved in shuffled order.
	if _, err := catInterleaved([]string{b.nat.hot, fuseHot}, 5, devnull, b.rng.Shuffle); err != nil {
		return err
	}
	meds, err := catInterleaved([]string{b.nat.hot, fuseHot}, sz.cats, devnull, b.rng.Shuffle)
	if err != nil {
		return err
	}
	res.add("cat.tmpfs", ms(meds[0]))
	res.add("cat.fuse", ms(meds[1]))

	// 3. 100 MB sequential read, 1 MiB buffers.
	var tmpfsMBs float64
	readTmpfs := func() (err error) { tmpfsMBs, err = seqRead(b.nat.bigA, sz.bigSize, big); return }
	readFuse := func() error {
		cold, err := seqRead(b.fusePath(bigScope, bigKeyA), sz.bigSize, big)
		if err != nil {
			return err
		}
		again, err := seqRead(b.fusePath(bigScope, bigKeyA), sz.bigSize, big)
		if err != nil {
			return err
		}
		disk, err := seqRead(b.fusePath(bigScope, bigKeyB), sz.bigSize, big)
		if err != nil {
			return err
		}
		res.add("big.fuse.cold", cold)
		res.add("big.fuse.repeat", again)
		res.add("big.fuse.disk", disk)
		return nil
	}
	if err := both(nativeFirst, readTmpfs, readFuse); err != nil {
		return err
	}
	res.add("big.tmpfs", tmpfsMBs)
	// The disk reference: the same blob file read directly from ext4, cold.
	if err := dropFileCache(b.fx.blobB); err != nil {
		return err
	}
	ext4, err := seqRead(b.fx.blobB, sz.bigSize, big)
	if err != nil {
		return err
	}
	res.add("big.ext4.disk", ext4)

	// 5. Small durable writes: through the mount, and natively on the
	// store's disk, interleaved in chunks of 100.
	if err := b.writes(r); err != nil {
		return err
	}

	// Fill the daemon's LRU (32 MiB of verified values), then its memory.
	for _, k := range b.fx.lruKeys {
		if _, err := openReadClose(b.fusePath(lruScope, k), 1, big); err != nil {
			return err
		}
	}
	b.readStats()
	rss, hwm, err := memKB(b.pid)
	if err != nil {
		return err
	}
	res.add("rss.end", float64(rss)/1024)
	res.add("hwm.end", float64(hwm)/1024)

	d, err = b.unmount()
	if err != nil {
		return err
	}
	res.add("unmount", ms(d))
	return nil
}

// writes runs workload 5 for repetition r.
func (b *bench) writes(r int) error {
	sz := b.o.sz
	wdir := filepath.Join(b.o.dir, "native-writes")
	if err := os.RemoveAll(wdir); err != nil {
		return err
	}
	dirs := map[string]string{"tmp": "", "a": "", "b": ""}
	for name := range dirs {
		dirs[name] = filepath.Join(wdir, name)
		if err := os.MkdirAll(dirs[name], 0o755); err != nil {
			return err
		}
	}
	defer os.RemoveAll(wdir)
	data := make([][]byte, 3*sz.writes) // distinct values: no dedup in the store
	for i := range data {
		data[i] = make([]byte, sz.writeSize)
		for j := 0; j+8 <= len(data[i]); j += 8 {
			v := b.rng.Uint64()
			for k := 0; k < 8; k++ {
				data[i][j+k] = byte(v >> (8 * k))
			}
		}
	}
	kinds := []func(i int) error{
		func(i int) error {
			return createWrite(b.fusePath(writeScope, fmt.Sprintf("w%d-%05d", r, i)), data[i])
		},
		func(i int) error {
			return nativeDurable(dirs["tmp"], dirs["a"], fmt.Sprintf("w%d-%05d", r, i), data[sz.writes+i], false)
		},
		func(i int) error {
			return nativeDurable(dirs["tmp"], dirs["b"], fmt.Sprintf("w%d-%05d", r, i), data[2*sz.writes+i], true)
		},
	}
	var total [3]time.Duration
	const chunk = 100
	order := []int{0, 1, 2}
	for start := 0; start < sz.writes; start += chunk {
		b.rng.Shuffle(len(order), func(i, j int) { order[i], order[j] = order[j], order[i] })
		for _, k := range order {
			t0 := time.Now()
			for i := start; i < min(start+chunk, sz.writes); i++ {
				if err := kinds[k](i); err != nil {
					return err
				}
			}
			total[k] += time.Since(t0)
		}
	}
	n := time.Duration(sz.writes)
	b.res.add("write.fuse", us(total[0]/n))
	b.res.add("write.native", us(total[1]/n))
	b.res.add("write.nativedir", us(total[2]/n))
	return nil
}

// readStats reads .stats through the mount for the LRU's fill.
func (b *bench) readStats() {
	data, err := os.ReadFile(filepath.Join(b.mnt, ".stats"))
	if err != nil {
		return
	}
	var st struct {
		HotEntries int64 `json:"hot_entries"`
		HotBytes   int64 `json:"hot_bytes"`
	}
	if json.Unmarshal(data, &st) == nil {
		b.res.hotEntries, b.res.hotBytes = st.HotEntries, st.HotBytes
	}
}
