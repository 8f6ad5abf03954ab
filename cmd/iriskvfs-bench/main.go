// Command iriskvfs-bench measures the iriskvfs mount side by side with
// native tmpfs in one run (issue 3, "How fast"): each repetition mounts a
// fresh iriskvfs daemon over a store of 100,000 keys (built once with
// store.Put and kept under -dir), runs every workload against the mount and
// against the same files on a tmpfs this program mounts itself, and
// unmounts. It prints medians and min–max over the repetitions, and the
// ratio iriskvfs/native computed pair by pair (per repetition, then the
// median of those ratios).
//
// Workloads: open+read+close of a hot 20 KB file in a loop; cat of it as a
// process; a 100 MB sequential read (first read after the mount, which
// verifies the SHA-256, and a repeat read); getdents+lstat of a scope of
// 100,000 keys (first listing after the mount, then a second); 2,000
// durable 4 KB writes through the mount against write+fsync+close+rename on
// the same disk as the store; the time `mount --daemon` takes with 100,000
// keys and the daemon's RSS. With -rt (the default) it then mounts once more
// with --debug and counts the FUSE requests behind one operation of each
// kind.
//
// It needs root (it mounts a tmpfs, and the daemon mounts directly) and
// /dev/fuse. Run it from the module (`make bench-fuse`): it builds
// cmd/iriskvfs itself unless -bin names a binary.
package main

import (
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// sizes are the workload sizes: full, or -quick for a smoke test.
type sizes struct {
	keys      int   // keys in the listed scope
	keySize   int   // bytes per listed key
	hotSize   int   // the hot instruction file
	hotWarm   int   // open+read+close warm-up iterations, per side
	hotIters  int   // timed open+read+close iterations, per side
	cats      int   // cat processes per side
	bigSize   int64 // the large artifact
	writes    int   // durable 4 KB writes per side
	writeSize int
	lruValues int // values of lruSize read to fill the daemon's LRU (32 MiB)
	lruSize   int
}

var fullSizes = sizes{
	keys: 100_000, keySize: 1 << 10, hotSize: 20 << 10, hotWarm: 1000, hotIters: 20_000,
	cats: 300, bigSize: 100 << 20, writes: 2000, writeSize: 4 << 10,
	lruValues: 40, lruSize: 1_000_000,
}

var quickSizes = sizes{
	keys: 5_000, keySize: 1 << 10, hotSize: 20 << 10, hotWarm: 200, hotIters: 2000,
	cats: 30, bigSize: 10 << 20, writes: 200, writeSize: 4 << 10,
	lruValues: 5, lruSize: 1_000_000,
}

type options struct {
	reps  int
	dir   string
	quick bool
	bin   string
	rt    bool
	fresh bool
	sz    sizes
}

// cleanups run in reverse order, once, on return, error, panic or signal.
type cleanups struct {
	mu  sync.Mutex
	fns []func()
}

func (c *cleanups) add(fn func()) {
	c.mu.Lock()
	c.fns = append(c.fns, fn)
	c.mu.Unlock()
}

func (c *cleanups) run() {
	c.mu.Lock()
	fns := c.fns
	c.fns = nil
	c.mu.Unlock()
	for i := len(fns) - 1; i >= 0; i-- {
		fns[i]()
	}
}

var cleanup cleanups

func main() {
	noAsyncPreemption()
	os.Exit(realMain())
}

// origGodebugEnv marks the re-executed process and keeps the caller's
// GODEBUG, for the iriskvfs commands this program runs.
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

// childEnv is the environment for the iriskvfs commands: the caller's own,
// GODEBUG included, so that the daemon runs as it would anywhere else.
func childEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GODEBUG=") && !strings.HasPrefix(kv, origGodebugEnv+"=") {
			env = append(env, kv)
		}
	}
	if orig := os.Getenv(origGodebugEnv); orig != "" {
		env = append(env, "GODEBUG="+orig)
	}
	return env
}

func realMain() int {
	var o options
	flag.IntVar(&o.reps, "reps", 5, "repetitions (each one mounts a fresh daemon)")
	flag.StringVar(&o.dir, "dir", filepath.Join(os.TempDir(), "iriskvfs-bench"), "work `DIR` on the real disk: the store fixture (kept across runs), native writes, mount points")
	flag.BoolVar(&o.quick, "quick", false, "small sizes, for a smoke test")
	flag.StringVar(&o.bin, "bin", "", "iriskvfs `BINARY` to mount with (default: build ./cmd/iriskvfs into DIR)")
	flag.BoolVar(&o.rt, "rt", true, "after the timed runs, mount with --debug and count the FUSE requests per operation")
	flag.BoolVar(&o.fresh, "fresh", false, "rebuild the store fixture even if a matching one is kept in DIR")
	flag.Parse()
	if flag.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: no arguments expected")
		return 2
	}
	if o.reps < 1 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: -reps must be at least 1")
		return 2
	}
	o.sz = fullSizes
	if o.quick {
		o.sz = quickSizes
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "iriskvfs-bench: must run as root (it mounts a tmpfs, and the daemon mounts directly)")
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

	info := machineInfo(bin)
	fmt.Printf("iriskvfs-bench: %s\n", info.oneLine())

	mnt := filepath.Join(dir, "mnt")
	tmpfsDir := filepath.Join(dir, "tmpfs")
	if err := clearLeftovers(bin, mnt, tmpfsDir); err != nil {
		return err
	}

	t0 := time.Now()
	fx, built, err := prepareFixture(dir, o.sz, o.fresh)
	if err != nil {
		return fmt.Errorf("fixture: %w", err)
	}
	if built {
		fmt.Printf("built the store fixture in %v\n", time.Since(t0).Round(time.Millisecond))
	} else {
		fmt.Printf("reusing the store fixture %s (prepared in %v)\n", fx.storeDir, time.Since(t0).Round(time.Millisecond))
	}

	t0 = time.Now()
	nat, err := prepareTmpfs(tmpfsDir, o.sz)
	if err != nil {
		return fmt.Errorf("tmpfs: %w", err)
	}
	fmt.Printf("mounted and filled the tmpfs %s in %v\n", tmpfsDir, time.Since(t0).Round(time.Millisecond))

	if !sameDevice(fx.storeDir, dir) {
		return fmt.Errorf("the store %s and the native write dir %s are not on the same device", fx.storeDir, dir)
	}

	b := &bench{o: o, bin: bin, mnt: mnt, fx: fx, nat: nat, res: newResults(),
		rng: rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 0x1715))}
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
	b.report(os.Stdout, info)
	return nil
}

// clearLeftovers unmounts what an interrupted earlier run may have left at
// our mount points.
func clearLeftovers(bin, mnt, tmpfsDir string) error {
	if t, ok := mountedType(mnt); ok {
		fmt.Printf("unmounting a leftover %s mount at %s\n", t, mnt)
		cmd := exec.Command(bin, "unmount", mnt)
		cmd.Env = childEnv()
		if out, err := cmd.CombinedOutput(); err != nil {
			if uerr := syscall.Unmount(mnt, syscall.MNT_DETACH); uerr != nil {
				return fmt.Errorf("leftover mount %s: %v: %s; %v", mnt, err, strings.TrimSpace(string(out)), uerr)
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
