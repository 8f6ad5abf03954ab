package main

import (
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// bench is one run.
type bench struct {
	o        *options
	bin      string
	fx, fxRO *fixture
	ts       []*target
	info     machine
	peers    map[string]peer
	res      *results
	rng      *rand.Rand
	nonce    uint64 // makes every written value of this run distinct
	drops    int    // drop_caches this run made
}

// results holds every figure of every repetition: metric → target → one
// value per repetition (NaN where there is none).
type results struct {
	reps                 int
	vals                 map[string]map[string][]float64
	errs                 map[string][]string // target → what failed
	started              time.Time
	elapsed              time.Duration
	loadStart, loadEnd   string
	loads                []float64
	slabStart, slabEnd   int64
	readAhead            map[string]string
	listEntries          int
	hotEntries, hotBytes int64
	mixOps               map[string]int // operations of each kind in the trace
	rt                   []rtCount
	rtRO                 []rtCount
	rtMount              time.Duration
}

func newResults(reps int) *results {
	return &results{reps: reps, vals: map[string]map[string][]float64{}, errs: map[string][]string{}, readAhead: map[string]string{}}
}

func (r *results) set(metric, target string, rep int, v float64) {
	m := r.vals[metric]
	if m == nil {
		m = map[string][]float64{}
		r.vals[metric] = m
	}
	s := m[target]
	if s == nil {
		s = make([]float64, r.reps)
		for i := range s {
			s[i] = math.NaN()
		}
		m[target] = s
	}
	s[rep] = v
}

func (r *results) get(metric, target string) []float64 { return r.vals[metric][target] }

// mb converts kB (as /proc shows them) to MB (10^6 bytes).
func mb(kb int64) float64 { return float64(kb) * 1024 / 1e6 }

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }
func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// isPeer: a failure of a peer (or of the loopback helper) costs that
// target its figures for the repetition; a failure of iriskvfs or of the
// native side stops the run.
func isPeer(t *target) bool {
	return t.name == tLoopback || t.name == tLoopExt4 || t.name == tGocrypt || t.name == tRclone
}

// measuresDaemon: mount time and RSS are reported for iriskvfs over the
// 100k-key store and for the peers serving the 100k-file tree, not for
// the helper mounts (a small store, an empty directory).
func measuresDaemon(t *target) bool { return t.name != tIrisRO && t.name != tLoopExt4 }

// try runs fn for t unless t already failed in this repetition.
func (b *bench) try(t *target, what string, fn func() error) error {
	if t.failed != "" {
		return nil
	}
	err := fn()
	if err == nil {
		return nil
	}
	err = fmt.Errorf("%s, %s: %w", t.name, what, err)
	if !isPeer(t) {
		return err
	}
	fmt.Fprintf(os.Stderr, "iriskvfs-bench: %v (no more figures for %s in this repetition)\n", err, t.name)
	t.failed = err.Error()
	b.res.errs[t.name] = append(b.res.errs[t.name], err.Error())
	return nil
}

// pick returns the runnable targets with the given names, in a freshly
// shuffled order.
func (b *bench) pick(names ...string) []*target {
	var out []*target
	for _, t := range b.ts {
		if t.skip == "" && t.failed == "" && slices.Contains(names, t.name) {
			out = append(out, t)
		}
	}
	b.rng.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func (b *bench) target(name string) *target {
	for _, t := range b.ts {
		if t.name == name {
			return t
		}
	}
	return nil
}

var (
	readTargets  = []string{tTmpfs, tIris, tLoopback, tGocrypt, tRclone}
	hotTargets   = []string{tTmpfs, tIris, tIrisRO, tLoopback, tGocrypt, tRclone}
	coldTargets  = append([]string{tExt4}, hotTargets...)
	writeTargets = []string{tTmpfs, tExt4, tExt4Dir, tIris, tLoopback, tLoopExt4, tGocrypt, tRclone}
	fuseTargets  = []string{tIris, tIrisRO, tLoopback, tLoopExt4, tGocrypt, tRclone}
)

// settle waits until a daemon is idle (under 5 % of a CPU over 200 ms; the
// store sweeps its blob files in the background after it opens), at most
// max, and returns how long that took.
func settle(pid int, max time.Duration) time.Duration {
	const step = 200 * time.Millisecond
	t0 := time.Now()
	prev, err := cpuTicks(pid)
	if err != nil {
		return 0
	}
	for time.Since(t0) < max {
		time.Sleep(step)
		cur, err := cpuTicks(pid)
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

// quiet waits (at most 5 s) until every mounted daemon is idle, so that
// what one target's daemon still does after a measurement (garbage
// collection, asynchronous FORGET and RELEASE) does not take a CPU from
// the next target's.
func (b *bench) quiet() {
	var pids []int
	for _, t := range b.ts {
		if t.m != nil && t.skip == "" && t.failed == "" {
			if pid := t.m.daemonPid(); pid > 0 {
				pids = append(pids, pid)
			}
		}
	}
	const step = 200 * time.Millisecond
	prev := make([]int64, len(pids))
	for i, pid := range pids {
		prev[i], _ = cpuTicks(pid)
	}
	for t0 := time.Now(); time.Since(t0) < 5*time.Second; {
		time.Sleep(step)
		idle := true
		for i, pid := range pids {
			cur, err := cpuTicks(pid)
			if err == nil && cur-prev[i] > 1 { // clock ticks are 10 ms
				idle = false
			}
			prev[i] = cur
		}
		if idle {
			return
		}
	}
}

func (b *bench) rep(r int) error {
	res := b.res
	res.loads = append(res.loads, load1())
	for _, t := range b.ts {
		t.failed = ""
	}
	defer func() {
		for _, t := range b.ts {
			if t.m != nil {
				_, _ = t.m.unmount()
			}
		}
	}()

	// 7. Mount every FUSE target with a fresh daemon.
	for _, t := range b.pick(fuseTargets...) {
		if err := b.try(t, "mount", func() error {
			d, err := t.m.mount()
			if err != nil {
				return err
			}
			if measuresDaemon(t) {
				res.set("mount", t.name, r, ms(d))
			}
			if _, ok := res.readAhead[t.name]; !ok {
				res.readAhead[t.name] = readAheadKB(t.root)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	for _, t := range b.pick(fuseTargets...) {
		s := settle(t.m.daemonPid(), 20*time.Second)
		if !measuresDaemon(t) {
			continue
		}
		if t.name == tIris {
			res.set("settle", t.name, r, ms(s))
		}
		if err := b.try(t, "RSS", func() error {
			rss, _, err := memKB(t.m.daemonPid())
			res.set("rss.mount", t.name, r, mb(rss))
			return err
		}); err != nil {
			return err
		}
	}

	steps := []struct {
		name string
		fn   func(int) error
	}{
		{"cold reads", b.coldReads},
		{"large reads", b.largeReads},
		{"listings", b.listings},
		{"hot reads", b.hotReads},
		{"writes", b.writes},
		{"mixed workload", b.mixed},
	}
	for _, s := range steps {
		t0 := time.Now()
		if err := s.fn(r); err != nil {
			return err
		}
		fmt.Printf("  %s: %v\n", s.name, time.Since(t0).Round(10*time.Millisecond))
	}

	// 7. Memory at the end: iriskvfs after filling its LRU (32 MiB of
	// verified values).
	for _, t := range b.pick(fuseTargets...) {
		if !measuresDaemon(t) {
			continue
		}
		if err := b.try(t, "RSS at the end", func() error {
			if t.name == tIris {
				big := make([]byte, 1<<20)
				for _, k := range b.fx.lruKeys {
					if _, err := openReadClose(t.path(lruScope+"/"+k), 1, big); err != nil {
						return err
					}
				}
				b.readStats(t)
			}
			rss, hwm, err := memKB(t.m.daemonPid())
			if err != nil {
				return err
			}
			res.set("rss.end", t.name, r, mb(rss))
			res.set("hwm.end", t.name, r, mb(hwm))
			return nil
		}); err != nil {
			return err
		}
	}

	// Clean up what the writes left, then unmount.
	if err := b.cleanWrites(); err != nil {
		return err
	}
	for _, t := range b.pick(fuseTargets...) {
		d, err := t.m.unmount()
		if err != nil {
			if !isPeer(t) {
				return fmt.Errorf("%s: %w", t.name, err)
			}
			b.res.errs[t.name] = append(b.res.errs[t.name], err.Error())
			continue
		}
		if measuresDaemon(t) {
			res.set("unmount", t.name, r, ms(d))
		}
	}
	// Tree-backed peers wrote into the tmpfs tree: remove it there too
	// (after a failure, the mount may have been gone).
	tree := b.target(tTmpfs).root
	for _, name := range []string{tTmpfs, tLoopback, tRclone} {
		for _, p := range []string{filepath.Join(tree, writeScope, name), filepath.Join(tree, writeScope, name+".tmp"), filepath.Join(tree, mixScope, "mix-"+name)} {
			if err := os.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	le := b.target(tLoopExt4).m.(*procMount).argv[1]
	for _, p := range []string{filepath.Dir(b.target(tExt4).writeDir), filepath.Join(le, writeScope), filepath.Join(le, writeScope+".tmp")} {
		if err := os.RemoveAll(p); err != nil {
			return err
		}
	}
	return nil
}

// cleanWrites removes what workloads 4 and 6 wrote, through the mounts.
func (b *bench) cleanWrites() error {
	for _, t := range b.pick(tIris, tGocrypt) {
		if err := b.try(t, "removing the written files", func() error {
			if t.iris {
				cmd := exec.Command(b.bin, "--store", b.fx.storeDir, "--config", b.fx.config, "clear", writeScope)
				cmd.Env = childEnv()
				if out, err := cmd.CombinedOutput(); err != nil {
					return fmt.Errorf("iriskvfs clear %s: %v: %s", writeScope, err, strings.TrimSpace(string(out)))
				}
				ents, err := os.ReadDir(t.mixDir)
				if err != nil {
					return err
				}
				for _, e := range ents {
					if strings.HasPrefix(e.Name(), "mix-c") {
						if err := os.Remove(filepath.Join(t.mixDir, e.Name())); err != nil {
							return err
						}
					}
				}
				return nil
			}
			for _, d := range []string{t.writeDir, t.tmpDir, t.mixDir} {
				if err := os.RemoveAll(d); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// 2. Cold reads: for each target, drop the kernel's caches (the mount's
// daemon is fresh), then open+read+close distinct 20 KB files never read
// since the mount; drop again, then cat other such files.
func (b *bench) coldReads(r int) error {
	sz := b.o.sz
	buf := make([]byte, 64<<10)
	for _, t := range b.pick(coldTargets...) {
		b.quiet()
		if err := b.try(t, "cold read", func() error {
			if err := b.dropCaches(); err != nil {
				return err
			}
			t0 := time.Now()
			for i := 0; i < sz.cold; i++ {
				if _, err := openReadClose(t.path(coldOrcRel(i)), 1, buf); err != nil {
					return err
				}
			}
			b.res.set("cold.orc", t.name, r, us(time.Since(t0))/float64(sz.cold))
			if err := b.dropCaches(); err != nil {
				return err
			}
			devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
			if err != nil {
				return err
			}
			defer devnull.Close()
			ds := make([]time.Duration, 0, sz.cold)
			for i := 0; i < sz.cold; i++ {
				d, err := catOnce(t.path(coldCatRel(i)), devnull)
				if err != nil {
					return err
				}
				ds = append(ds, d)
			}
			b.res.set("cold.cat", t.name, r, ms(medianDuration(ds)))
			for i := 0; i < sz.cold; i++ {
				if err := checkContent(t.path(coldOrcRel(i)), coldValue(coldOrcKey(i), sz.hotSize)); err != nil {
					return err
				}
				if err := checkContent(t.path(coldCatRel(i)), coldValue(coldCatKey(i), sz.hotSize)); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) dropCaches() error {
	if b.o.keepCaches {
		return nil
	}
	b.drops++
	return dropCaches()
}

func medianDuration(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}

// 3. Large sequential reads, 1 MiB buffers: the first after the mount and a
// repeat. For iriskvfs the blob of the value read is in the host page
// cache first (so the figure is the daemon's, not the disk's); then a
// second value whose blob was evicted, against that blob file read
// directly.
func (b *bench) largeReads(r int) error {
	sz := b.o.sz
	big := make([]byte, 1<<20)
	if _, err := seqRead(b.fx.blobA, sz.bigSize, big); err != nil {
		return err
	}
	if err := dropFileCache(b.fx.blobB); err != nil {
		return err
	}
	for _, t := range b.pick(readTargets...) {
		b.quiet()
		if err := b.try(t, "large read", func() error {
			first, err := seqRead(t.path(bigRel), sz.bigSize, big)
			if err != nil {
				return err
			}
			again, err := seqRead(t.path(bigRel), sz.bigSize, big)
			if err != nil {
				return err
			}
			b.res.set("big.first", t.name, r, first)
			b.res.set("big.repeat", t.name, r, again)
			if t.name == tIris {
				disk, err := seqRead(t.path(bigScope+"/"+bigKeyB), sz.bigSize, big)
				if err != nil {
					return err
				}
				b.res.set("big.disk", t.name, r, disk)
			}
			return nil
		}); err != nil {
			return err
		}
	}
	// The disk reference: the same blob file read directly from ext4, cold.
	if err := dropFileCache(b.fx.blobB); err != nil {
		return err
	}
	ext4, err := seqRead(b.fx.blobB, sz.bigSize, big)
	if err != nil {
		return err
	}
	b.res.set("big.disk", tExt4, r, ext4)
	return nil
}

// 5. ls -l equivalent of the 100k-key directory: the first listing after
// the mount, then a second; then ls -l itself. The store's index is read
// into the host page cache first.
func (b *bench) listings(r int) error {
	sz := b.o.sz
	big := make([]byte, 1<<20)
	readIndex := func() error {
		if fi, err := os.Stat(b.fx.index); err == nil {
			if _, err := seqRead(b.fx.index, fi.Size(), big); err != nil {
				return err
			}
		}
		return nil
	}
	if err := readIndex(); err != nil {
		return err
	}
	for _, pass := range []string{"1", "2"} {
		for _, t := range b.pick(readTargets...) {
			b.quiet()
			if err := b.try(t, "listing "+pass, func() error {
				l, err := lsl(t.path(listRel))
				if err != nil {
					return err
				}
				want := sz.keys
				if t.iris {
					want++ // _index.json
				}
				if l.entries != want {
					return fmt.Errorf("listed %d entries, want %d", l.entries, want)
				}
				if t.iris {
					b.res.listEntries = l.entries
					b.res.set("ls.index."+pass, t.name, r, ms(l.index))
				}
				b.res.set("ls."+pass, t.name, r, ms(l.total))
				return nil
			}); err != nil {
				return err
			}
		}
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	for _, t := range b.pick(readTargets...) {
		b.quiet()
		if err := b.try(t, "ls -l", func() error {
			d, err := lsProcess(t.path(listRel), devnull)
			if err != nil {
				return err
			}
			b.res.set("lsproc", t.name, r, ms(d))
			if t.fuse() {
				rss, _, err := memKB(t.m.daemonPid())
				if err != nil {
					return err
				}
				b.res.set("rss.listing", t.name, r, mb(rss))
			}
			return nil
		}); err != nil {
			return err
		}
	}
	// ls -l once more after the kernel dropped its caches: a FUSE mount
	// forgets the listing's inodes (FORGET reaches the daemons) and lists
	// with READDIRPLUS again, as on the first listing after a mount.
	for _, t := range b.pick(readTargets...) {
		b.quiet()
		if err := b.try(t, "ls -l after drop_caches", func() error {
			if err := b.dropCaches(); err != nil {
				return err
			}
			if err := readIndex(); err != nil {
				return err
			}
			d, err := lsProcess(t.path(listRel), devnull)
			if err != nil {
				return err
			}
			b.res.set("lsproc.cold", t.name, r, ms(d))
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// 1. Hot small reads: open+read+close of the 20 KB file in a loop, target
// by target; then cat of it, one cat per target per round in a freshly
// shuffled order.
func (b *bench) hotReads(r int) error {
	sz := b.o.sz
	buf := make([]byte, 64<<10)
	for _, t := range b.pick(hotTargets...) {
		b.quiet()
		if err := b.try(t, "hot open+read+close", func() error {
			if err := checkContent(t.path(hotRel), b.fx.hot); err != nil {
				return err
			}
			if _, err := openReadClose(t.path(hotRel), sz.hotWarm, buf); err != nil {
				return err
			}
			d, err := openReadClose(t.path(hotRel), sz.hotIters, buf)
			if err != nil {
				return err
			}
			b.res.set("orc", t.name, r, us(d))
			return nil
		}); err != nil {
			return err
		}
	}
	devnull, err := os.OpenFile(os.DevNull, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	defer devnull.Close()
	b.quiet()
	ts := b.pick(hotTargets...)
	paths := make([]string, len(ts))
	for i, t := range ts {
		paths[i] = t.path(hotRel)
	}
	if _, errs := catInterleaved(paths, 5, devnull, b.rng.Shuffle); b.catErrs(ts, errs) != nil {
		return b.catErrs(ts, errs)
	}
	meds, errs := catInterleaved(paths, sz.cats, devnull, b.rng.Shuffle)
	if err := b.catErrs(ts, errs); err != nil {
		return err
	}
	for i, t := range ts {
		if errs[i] == nil {
			b.res.set("cat", t.name, r, ms(meds[i]))
		}
	}
	return nil
}

func (b *bench) catErrs(ts []*target, errs []error) error {
	for i, err := range errs {
		if err != nil {
			if err := b.try(ts[i], "cat", func() error { return err }); err != nil {
				return err
			}
		}
	}
	return nil
}

// 4. Small durable writes: 4 KB values, new names, every target in chunks
// of 100 in a freshly shuffled order per chunk.
func (b *bench) writes(r int) error {
	sz := b.o.sz
	ts := b.pick(writeTargets...)
	for _, t := range ts {
		if !t.iris {
			for _, d := range []string{t.writeDir, t.tmpDir} {
				if err := b.try(t, "mkdir", func() error { return os.MkdirAll(d, 0o755) }); err != nil {
					return err
				}
			}
		}
	}
	name := func(i int) string { return fmt.Sprintf("w%d-%05d", r, i) }
	one := func(t *target, i int, v []byte) error {
		if t.iris {
			return createWrite(filepath.Join(t.writeDir, name(i)), v)
		}
		return nativeDurable(t.tmpDir, t.writeDir, name(i), v, t.syncDir)
	}
	b.quiet()
	total := map[string]time.Duration{}
	const chunk = 100
	vals := make([][]byte, chunk)
	for i := range vals {
		vals[i] = make([]byte, sz.writeSize)
	}
	for start := 0; start < sz.writes; start += chunk {
		b.rng.Shuffle(len(ts), func(i, j int) { ts[i], ts[j] = ts[j], ts[i] })
		for _, t := range ts {
			if err := b.try(t, "write", func() error {
				end := min(start+chunk, sz.writes)
				for i := start; i < end; i++ {
					b.value(vals[i-start], t.name, r, i)
				}
				t0 := time.Now()
				for i := start; i < end; i++ {
					if err := one(t, i, vals[i-start]); err != nil {
						return err
					}
				}
				total[t.name] += time.Since(t0)
				return nil
			}); err != nil {
				return err
			}
		}
	}
	for _, t := range ts {
		if err := b.try(t, "reading back what was written", func() error {
			for _, i := range []int{0, sz.writes / 2, sz.writes - 1} {
				if err := checkContent(filepath.Join(t.writeDir, name(i)), b.value(make([]byte, sz.writeSize), t.name, r, i)); err != nil {
					return err
				}
			}
			b.res.set("write", t.name, r, us(total[t.name])/float64(sz.writes))
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// value fills buf with the content of write i of target name in
// repetition r: pseudo-random, distinct for every write of the run (no
// dedup in the store), and the same when asked again.
func (b *bench) value(buf []byte, name string, r, i int) []byte {
	seed := sha256.Sum256(fmt.Appendf(nil, "%x/%s/%d/%d", b.nonce, name, r, i))
	_, _ = rand.NewChaCha8(seed).Read(buf)
	return buf
}

// readStats reads .stats through the mount for the LRU's fill.
func (b *bench) readStats(t *target) {
	data, err := os.ReadFile(filepath.Join(t.root, ".stats"))
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
