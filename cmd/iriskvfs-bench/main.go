// Command iriskvfs-bench measures the iriskvfs mount side by side, in one
// run, with native tmpfs (the physical limit), go-fuse's loopback over
// tmpfs (the floor of a Go FUSE layer, served by this same program re-run
// as a helper), and the peers gocryptfs and rclone mount where they are
// installed (a peer that is not is reported as skipped). Every repetition
// mounts a fresh daemon of each FUSE target (iriskvfs over a store of
// 100,000 keys, built once with store.Put and kept under -dir; an iriskvfs
// --read-only mount of a small second store; the peers over a tmpfs
// holding the same files), runs every workload against every target, in a
// freshly shuffled order, and unmounts them all.
//
// Workloads: (1) open+read+close of a hot 20 KB file in a loop and cat of
// it as a process; (2) the same, first touch after a fresh mount and
// drop_caches; (3) a 100 MB sequential read, first after the mount and
// repeated; (4) 10,000 durable 4 KB writes (iriskvfs: create+write+close;
// the others: write+fsync+close+rename); (5) getdents+lstat of 100,000
// files, first and second listing after the mount, and ls -l; (6) a mixed
// agent trace from 8 concurrent clients; (7) mount time and daemon RSS.
// It prints medians and min–max over the repetitions, and each target's
// ratio to tmpfs computed pair by pair (repetition i against repetition
// i), as Markdown tables with the targets beside iriskvfs's
// ratios. With -rt (the default) it then mounts iriskvfs once more with
// --debug and counts the FUSE requests behind one operation of each kind.
//
// It needs root (it mounts a tmpfs, the daemons mount directly, and it
// drops the kernel caches) and /dev/fuse. Run it from the module (`make
// bench-fuse`): it builds cmd/iriskvfs itself unless -bin names a binary.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// sizes are the workload sizes: full, or -quick for a smoke test.
type sizes struct {
	keys      int   // keys in the listed directory
	keySize   int   // bytes per listed key
	hotSize   int   // the hot instruction file (and the cold ones)
	hotWarm   int   // open+read+close warm-up iterations, per target
	hotIters  int   // timed open+read+close iterations, per target
	cats      int   // cat processes per target
	cold      int   // distinct cold files per kind (open+read+close, cat)
	bigSize   int64 // the large artifact
	writes    int   // durable 4 KB writes per target
	writeSize int
	lruValues int // values of lruSize read to fill the daemon's LRU (32 MiB)
	lruSize   int
	// the mixed agent workload
	mixInstr, mixProj int // instruction files (5–50 KB) and project files (1–100 KB)
	mixClients        int // concurrent clients
	mixOps            int // operations per client
	mixMaxWrite       int // artifact writes are 1 KB – mixMaxWrite
}

var fullSizes = sizes{
	keys: 100_000, keySize: 1 << 10, hotSize: 20 << 10, hotWarm: 1000, hotIters: 20_000,
	cats: 300, cold: 10, bigSize: 100 << 20, writes: 10_000, writeSize: 4 << 10,
	lruValues: 40, lruSize: 1_000_000,
	mixInstr: 12, mixProj: 200, mixClients: 8, mixOps: 500, mixMaxWrite: 500_000,
}

var quickSizes = sizes{
	keys: 2_000, keySize: 1 << 10, hotSize: 20 << 10, hotWarm: 100, hotIters: 1000,
	cats: 20, cold: 3, bigSize: 8 << 20, writes: 200, writeSize: 4 << 10,
	lruValues: 3, lruSize: 1_000_000,
	mixInstr: 6, mixProj: 20, mixClients: 8, mixOps: 40, mixMaxWrite: 500_000,
}

type options struct {
	reps  int
	dir   string
	quick bool
	bin   string
	rt    bool
	fresh bool
	peers bool
	sz    sizes
	out   io.Writer // the report
	// keepCaches skips drop_caches (the cold reads are then warm): the
	// smoke test runs beside other packages' tests, and emptying the
	// machine's caches under them makes their kernels forget what they hold.
	keepCaches bool
}

// cleanups run in reverse order, once, on return, error, panic or signal.
// A second caller waits for the first to finish (so that the program never
// exits while a signal's cleanup is unmounting), and once they have
// started, no new mount may begin.
type cleanups struct {
	mu       sync.Mutex
	fns      []func()
	runMu    sync.Mutex
	stopping atomic.Bool
}

func (c *cleanups) add(fn func()) {
	c.mu.Lock()
	c.fns = append(c.fns, fn)
	c.mu.Unlock()
}

func (c *cleanups) run() {
	c.stopping.Store(true)
	c.runMu.Lock()
	defer c.runMu.Unlock()
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

var errStopping = errors.New("stopping: no new mounts")

var cleanup cleanups

func main() {
	if os.Getenv(roleEnv) == "loopback" {
		os.Exit(loopbackMain(os.Args[1:]))
	}
	noAsyncPreemption()
	os.Exit(realMain())
}

// origGodebugEnv marks the re-executed process and keeps the caller's
// GODEBUG, for the daemons this program runs.
const origGodebugEnv = "IRISKVFS_BENCH_ORIG_GODEBUG"

// noAsyncPreemption re-executes this program with async preemption off.
// Otherwise the Go runtime signals a thread that has run for 10 ms while
// it is blocked in a FUSE request (the lstat of a long listing), and the
// kernel sends the daemon an INTERRUPT for it: extra requests that a C
// client such as ls never causes.
func noAsyncPreemption() {
	if _, done := os.LookupEnv(origGodebugEnv); done {
		return
	}
	self, err := os.Executable()
	if err != nil {
		return
	}
	orig := os.Getenv("GODEBUG")
	godebug := "asyncpreemptoff=1"
	if orig != "" {
		godebug = orig + "," + godebug
	}
	env := []string{origGodebugEnv + "=" + orig, "GODEBUG=" + godebug}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") {
			env = append(env, kv)
		}
	}
	_ = syscall.Exec(self, os.Args, env) // returns only on failure: run as we are
}

// childEnv is the environment for the daemons: the caller's own, GODEBUG
// included, so that each runs as it would anywhere else.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, origGodebugEnv+"=") && !strings.HasPrefix(kv, roleEnv+"=") {
			env = append(env, kv)
		}
	}
	if orig := os.Getenv(origGodebugEnv); orig != "" {
		env = append(env, "GODEBUG="+orig)
	}
	return env
}

func realMain() int {
	o := options{out: os.Stdout}
	flag.IntVar(&o.reps, "reps", 5, "repetitions (each one mounts a fresh daemon of every FUSE target)")
	flag.StringVar(&o.dir, "dir", filepath.Join(os.TempDir(), "iriskvfs-bench"), "work `DIR` on the real disk: the store fixtures (kept across runs), native durable writes, mount points, the tmpfs")
	flag.BoolVar(&o.quick, "quick", false, "small sizes and 1 repetition, for a smoke test")
	flag.StringVar(&o.bin, "bin", "", "iriskvfs `BINARY` to mount with (default: build ./cmd/iriskvfs into DIR)")
	flag.BoolVar(&o.rt, "rt", true, "after the timed runs, mount iriskvfs with --debug and count the FUSE requests per operation")
	flag.BoolVar(&o.fresh, "fresh", false, "rebuild the store fixtures even if matching ones are kept in DIR")
	flag.BoolVar(&o.peers, "peers", true, "run gocryptfs and rclone where installed")
	flag.BoolVar(&o.keepCaches, "keep-caches", false, "never drop the kernel's caches (the cold reads are then warm): for a run beside other tests, e.g. to measure memory")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: no arguments expected")
		return 2
	}
	repsSet := false
	flag.Visit(func(f *flag.Flag) { repsSet = repsSet || f.Name == "reps" })
	o.sz = fullSizes
	if o.quick {
		o.sz = quickSizes
		if !repsSet {
			o.reps = 1
		}
	}
	if o.reps < 1 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: -reps must be at least 1")
		return 2
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: must run as root (it mounts a tmpfs, the daemons mount directly, and it drops the kernel caches)")
		return 2
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		fmt.Fprintf(os.Stderr, "iriskvfs-bench: /dev/fuse: %v\n", err)
		return 2
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sigs
		fmt.Fprintf(os.Stderr, "\niriskvfs-bench: %v: cleaning up\n", s)
		cleanup.run()
		os.Exit(130)
	}()
	defer cleanup.run()

	if err := run(&o); err != nil {
		fmt.Fprintf(os.Stderr, "iriskvfs-bench: %v\n", err)
		return 1
	}
	return 0
}

func run(o *options) error {
	dir, err := filepath.Abs(o.dir)
	if err != nil {
		return err
	}
	o.dir = dir
	if t := fsType(dir); t == "tmpfs" || t == "ramfs" {
		return fmt.Errorf("-dir %s is on %s: it must be on the real disk (durable writes are measured there)", dir, t)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	fmt.Printf("work dir %s (%s); %d repetitions%s\n", dir, fsType(dir), o.reps, map[bool]string{true: ", -quick sizes"}[o.quick])

	bin := o.bin
	if bin == "" {
		bin = filepath.Join(dir, "iriskvfs")
		fmt.Printf("building %s ...\n", bin)
		cmd := exec.Command("go", "build", "-o", bin, "github.com/iriskvfs/iriskvfs/cmd/iriskvfs")
		cmd.Env = childEnv()
		cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("go build cmd/iriskvfs (run from the module, or give -bin): %w", err)
		}
	}
	if bin, err = filepath.Abs(bin); err != nil {
		return err
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}

	info := machineInfo(bin)
	fmt.Printf("iriskvfs-bench: %s\n", info.oneLine())
	peers := map[string]peer{
		tGocrypt: findPeer(tGocrypt, "-version"),
		tRclone:  findPeer(tRclone, "version"),
	}
	for _, name := range []string{tGocrypt, tRclone} {
		p := peers[name]
		if !o.peers {
			p.skip = "skipped (-peers=false)"
			peers[name] = p
		}
		if p.skip != "" {
			fmt.Printf("%s: %s\n", name, p.skip)
		} else {
			fmt.Printf("%s: %s (%s)\n", name, p.version, p.bin)
		}
	}

	mntBase := filepath.Join(dir, "mnt")
	tmpfsDir := filepath.Join(dir, "tmpfs")
	mnt := func(name string) string { return filepath.Join(mntBase, name) }
	points := []string{mnt(tIris), mnt(tIrisRO), mnt(tLoopback), mnt(tLoopExt4), mnt(tGocrypt), mnt(tRclone)}
	if err := clearLeftovers(bin, points, tmpfsDir); err != nil {
		return err
	}

	t0 := time.Now()
	fx, built, err := prepareFixture(dir, o.sz, o.fresh, false)
	if err != nil {
		return fmt.Errorf("fixture: %w", err)
	}
	fxRO, builtRO, err := prepareFixture(dir, o.sz, o.fresh, true)
	if err != nil {
		return fmt.Errorf("read-only fixture: %w", err)
	}
	if built || builtRO {
		fmt.Printf("built the store fixtures in %v\n", time.Since(t0).Round(time.Millisecond))
	} else {
		fmt.Printf("reusing the store fixtures %s, %s (prepared in %v)\n", fx.storeDir, fxRO.storeDir, time.Since(t0).Round(time.Millisecond))
	}

	t0 = time.Now()
	if err := mountTmpfs(tmpfsDir); err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	tree := filepath.Join(tmpfsDir, "tree")
	if err := writeTree(tree, o.sz, 1); err != nil {
		return fmt.Errorf("tmpfs tree: %w", err)
	}
	fmt.Printf("mounted and filled the tmpfs %s in %v\n", tmpfsDir, time.Since(t0).Round(time.Millisecond))

	ext4Dir := filepath.Join(dir, "native-writes")
	if !sameDevice(fx.storeDir, dir) {
		return fmt.Errorf("the store %s and the native write dir %s are not on the same device", fx.storeDir, ext4Dir)
	}
	ext4Tree := filepath.Join(dir, "ext4-tree")
	if err := writeColdFiles(ext4Tree, o.sz); err != nil {
		return err
	}
	// The peers keep their files on the store's disk, where a user would
	// put a cache that must outlive a reboot: on a tmpfs their fsync would
	// cost nothing and drop_caches could not make their reads cold.
	peerTree := filepath.Join(dir, "peer-tree")
	if peers[tRclone].skip == "" {
		t0 := time.Now()
		if err := os.RemoveAll(peerTree); err != nil {
			return err
		}
		if err := writeTree(peerTree, o.sz, 8); err != nil {
			return fmt.Errorf("peer tree on ext4: %w", err)
		}
		fmt.Printf("wrote rclone's tree on ext4 %s in %v\n", peerTree, time.Since(t0).Round(time.Millisecond))
	}
	loopExt4 := filepath.Join(dir, "loopback-ext4")
	if err := os.MkdirAll(loopExt4, 0o755); err != nil {
		return err
	}

	// The targets. Tree-backed ones write under names of their own.
	treeTarget := func(name, root string, m mounter, desc string) *target {
		return &target{name: name, root: root, m: m, desc: desc,
			writeDir: filepath.Join(root, writeScope, name), tmpDir: filepath.Join(root, writeScope, name+".tmp"),
			mixDir: filepath.Join(root, mixScope, "mix-"+name)}
	}
	ts := []*target{
		treeTarget(tTmpfs, tree, nil, "native tmpfs, the same files (the physical limit)"),
		{name: tExt4, root: ext4Tree, desc: "native ext4, the store's disk: the cold reads (the same files) and write+fsync+close+rename (the contract's pairing for writes)",
			writeDir: filepath.Join(ext4Dir, "a"), tmpDir: filepath.Join(ext4Dir, "tmp")},
		{name: tExt4Dir, root: ext4Tree, desc: "the same writes plus fsync of the directory (what a store put guarantees)",
			writeDir: filepath.Join(ext4Dir, "b"), tmpDir: filepath.Join(ext4Dir, "tmp"), syncDir: true},
		{name: tIris, root: mnt(tIris), iris: true, desc: "`iriskvfs mount --daemon` of the store fixture on ext4",
			m: &irisMount{bin: bin, fx: fx, mnt: mnt(tIris)}, writeDir: filepath.Join(mnt(tIris), writeScope), mixDir: filepath.Join(mnt(tIris), mixScope)},
		{name: tIrisRO, root: mnt(tIrisRO), iris: true, desc: "`iriskvfs mount --daemon --read-only` of a second store holding the same hot and cold files (one daemon per store)",
			m: &irisMount{bin: bin, fx: fxRO, mnt: mnt(tIrisRO), readOnly: true}},
		treeTarget(tLoopback, mnt(tLoopback), &procMount{name: tLoopback, fstype: "fuse.loopback", mnt: mnt(tLoopback),
			argv: []string{self, tree, mnt(tLoopback)}, env: []string{roleEnv + "=loopback"}, logPath: filepath.Join(dir, "loopback.log")},
			"go-fuse "+info.goFuse+" `fs.NewLoopbackRoot` over the tmpfs tree, served by this program; "+loopbackOptionsText),
		{name: tLoopExt4, root: mnt(tLoopExt4), desc: "the same loopback over a directory on the store's ext4, for the durable writes only (write+fsync+close+rename through it: the floor of a durable Go FUSE write)",
			m: &procMount{name: tLoopExt4, fstype: "fuse.loopback", mnt: mnt(tLoopExt4),
				argv: []string{self, loopExt4, mnt(tLoopExt4)}, env: []string{roleEnv + "=loopback"}, logPath: filepath.Join(dir, "loopback.log")},
			writeDir: filepath.Join(mnt(tLoopExt4), writeScope), tmpDir: filepath.Join(mnt(tLoopExt4), writeScope+".tmp")},
	}
	if p := peers[tGocrypt]; p.skip == "" {
		gt, err := setupGocryptfs(p, dir, mnt(tGocrypt), o.sz)
		if err != nil {
			return fmt.Errorf("gocryptfs: %w", err)
		}
		ts = append(ts, treeTarget(tGocrypt, mnt(tGocrypt), gt, p.version+"; cipher dir on the store's ext4, `gocryptfs -fg -q -passfile F`, default options"))
	} else {
		ts = append(ts, &target{name: tGocrypt, skip: p.skip})
	}
	if p := peers[tRclone]; p.skip == "" {
		conf := filepath.Join(dir, "rclone.conf")
		if err := os.WriteFile(conf, nil, 0o600); err != nil {
			return err
		}
		rm := &procMount{name: tRclone, fstype: "fuse.rclone", mnt: mnt(tRclone),
			argv: []string{p.bin, "mount", peerTree, mnt(tRclone), "--config", conf, "--vfs-cache-mode", "off"}, logPath: filepath.Join(dir, "rclone.log")}
		ts = append(ts, treeTarget(tRclone, mnt(tRclone), rm, p.version+" `rclone mount` of the same tree on the store's ext4 (local backend), `--vfs-cache-mode off`: enough for every workload here"))
	} else {
		ts = append(ts, &target{name: tRclone, skip: p.skip})
	}

	b := &bench{o: o, bin: bin, fx: fx, fxRO: fxRO, ts: ts, info: info, peers: peers, res: newResults(o.reps),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x1715)), nonce: uint64(time.Now().UnixNano())}
	b.res.loadStart = loadavg()
	b.res.slabStart = dropSlab()
	b.res.started = time.Now()
	for r := 0; r < o.reps; r++ {
		fmt.Printf("repetition %d/%d (load %s)\n", r+1, o.reps, loadavg())
		if err := b.rep(r); err != nil {
			return fmt.Errorf("repetition %d: %w", r+1, err)
		}
	}
	b.res.loadEnd = loadavg()
	b.res.slabEnd = dropSlab()
	b.res.elapsed = time.Since(b.res.started)
	if o.rt {
		fmt.Println("counting FUSE requests (mount --debug) ...")
		if err := b.countRoundTrips(); err != nil {
			return fmt.Errorf("round trips: %w", err)
		}
	}
	fmt.Println()
	b.report(o.out)
	return nil
}

// setupGocryptfs initialises a gocryptfs cipher dir on the store's disk
// (what an earlier run left there is removed first), mounts it once to write
// the tree through it, and returns its mounter.
func setupGocryptfs(p peer, dir, point string, sz sizes) (*procMount, error) {
	cipher := filepath.Join(dir, "gocryptfs-cipher")
	pass := filepath.Join(dir, "gocryptfs.pass")
	if err := os.WriteFile(pass, []byte("iriskvfs-bench\n"), 0o600); err != nil {
		return nil, err
	}
	if err := os.RemoveAll(cipher); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(cipher, 0o755); err != nil {
		return nil, err
	}
	if out, err := exec.Command(p.bin, "-init", "-q", "-passfile", pass, cipher).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("gocryptfs -init: %v: %s", err, strings.TrimSpace(string(out)))
	}
	m := &procMount{name: tGocrypt, fstype: "fuse.gocryptfs", mnt: point,
		argv: []string{p.bin, "-fg", "-q", "-passfile", pass, cipher, point}, logPath: filepath.Join(dir, "gocryptfs.log")}
	t0 := time.Now()
	if _, err := m.mount(); err != nil {
		return nil, err
	}
	err := writeTree(point, sz, 8)
	if _, uerr := m.unmount(); err == nil {
		err = uerr
	}
	if err != nil {
		return nil, fmt.Errorf("writing the tree through gocryptfs: %w", err)
	}
	fmt.Printf("wrote the tree through gocryptfs in %v\n", time.Since(t0).Round(time.Millisecond))
	return m, nil
}

// clearLeftovers unmounts what an interrupted earlier run may have left at
// our mount points.
func clearLeftovers(bin string, points []string, tmpfsDir string) error {
	for _, mnt := range points {
		t, ok := mountedType(mnt)
		if !ok {
			continue
		}
		fmt.Printf("unmounting a leftover %s mount at %s\n", t, mnt)
		if t == "fuse.iriskvfs" {
			cmd := exec.Command(bin, "unmount", mnt)
			cmd.Env = childEnv()
			if cmd.Run() == nil {
				continue
			}
		}
		if err := syscall.Unmount(mnt, 0); err != nil {
			if uerr := syscall.Unmount(mnt, syscall.MNT_DETACH); uerr != nil {
				return fmt.Errorf("leftover mount %s: %v; %v", mnt, err, uerr)
			}
		}
	}
	for {
		t, ok := mountedType(tmpfsDir)
		if !ok {
			break
		}
		if t != "tmpfs" {
			return fmt.Errorf("%s is a %s mount, not the benchmark's tmpfs: not touching it", tmpfsDir, t)
		}
		fmt.Printf("unmounting a leftover tmpfs at %s\n", tmpfsDir)
		if err := syscall.Unmount(tmpfsDir, 0); err != nil {
			if err := syscall.Unmount(tmpfsDir, syscall.MNT_DETACH); err != nil {
				return fmt.Errorf("leftover tmpfs %s: %w", tmpfsDir, err)
			}
		}
	}
	return nil
}
