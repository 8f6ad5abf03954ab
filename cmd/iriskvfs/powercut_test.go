//go:build linux

package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/fs"
	"github.com/iriskvfs/iriskvfs/store"
)

// TestPowerCut simulates power cuts under a mounted, busy iriskvfs: the
// store lives on an ext4 filesystem on a loop device whose backing file is
// a recDisk (powercut_disk_test.go), a disk with a volatile write cache
// that records what was flushed and what was only written. A writer
// process writes through the mount (create/write/close, O_TRUNC rewrites,
// write+fsync, appends, renames, unlinks) and through the CLI (put and rm
// over the daemon's admin socket), announcing every operation before it
// starts and after it returned 0. At a random moment the disk is cut: it
// freezes (no write or flush completes any more, so nothing can be
// acknowledged that relied on one), the writer and the daemon are killed,
// and every mount and the loop device are torn down. Then, for several
// power-cut images of that one moment (the durable image plus none, all, a
// random subset, or a prefix of the writes since the last flush), the
// image is mounted again (ext4 replays its journal), and:
//
//   - `iriskvfs fsck` on the store is clean, and so is `e2fsck -fn`;
//   - every key whose last operation was acknowledged holds exactly that
//     value (or is gone, after an acknowledged rm or rename away);
//   - a key with an operation in flight holds its old value or the new
//     one (a rename in flight: both keys as before, or both as after);
//   - the scope lists no other key.
//
// The next cut starts from one of the images (the last one checked).
const (
	powercutWriterMode = "powercut-writer"
	powercutItersEnv   = "IRISKVFS_POWERCUT_ITERATIONS"
	powercutDirEnv     = "IRISKVFS_POWERCUT_DIR"
	powercutStoreEnv   = "IRISKVFS_POWERCUT_STORE"
	powercutCLIEnv     = "IRISKVFS_POWERCUT_CLI"
	powercutRoleEnv    = "IRISKVFS_POWERCUT_ROLE"
	powercutDiskSize   = 128 << 20
)

// TestPowerCutWriter is a writer; it runs only inside TestPowerCut, twice:
// with role "mount" two goroutines write through the mount, with role
// "cli" one writes through the CLI, each on keys of its own (prefixes w0-,
// w1-, c-), so each has at most one operation in flight on a key; each
// reads only its own keys at the start (see powercutOwnValues). Lines
// (one write(2) each, under PIPE_BUF):
//
//	ready
//	intent put KEY SHA256 SIZE   ack put KEY SHA256
//	intent rm KEY                ack rm KEY
//	intent mv FROM TO SHA256     ack mv FROM TO
func TestPowerCutWriter(t *testing.T) {
	if os.Getenv(crashChildEnv) != powercutWriterMode {
		t.Skip("the writer process of TestPowerCut")
	}
	dir, storeDir, cli := os.Getenv(powercutDirEnv), os.Getenv(powercutStoreEnv), os.Getenv(powercutCLIEnv)
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	time.AfterFunc(2*time.Minute, func() { os.Exit(4) }) // never outlive a lost parent
	// The CLI on $PATH is this test binary, which is the CLI only
	// without crashChildEnv.
	cliEnv := slices.DeleteFunc(os.Environ(), func(e string) bool { return strings.HasPrefix(e, crashChildEnv+"=") })
	runCLI := func(in []byte, args ...string) error {
		cmd := exec.Command(cli, append([]string{"--store", storeDir}, args...)...)
		cmd.Env = cliEnv
		cmd.Stdin = bytes.NewReader(in)
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("iriskvfs %s: %v: %s", strings.Join(args, " "), err, out)
		}
		return nil
	}
	say := announcer()
	fail := func(err error) {
		// Both writers' stderr goes to one buffer: say which one failed.
		fmt.Fprintf(os.Stderr, "writer (%s, pid %d): %v\n", os.Getenv(powercutRoleEnv), os.Getpid(), err)
		os.Exit(3)
	}
	goroutines := []int{0, 1} // through the mount
	if os.Getenv(powercutRoleEnv) == "cli" {
		goroutines = []int{2}
	}
	prefixOf := func(w int) string {
		if w == 2 {
			return "c-"
		}
		return fmt.Sprintf("w%d-", w)
	}
	var prefixes []string
	for _, w := range goroutines {
		prefixes = append(prefixes, prefixOf(w))
	}
	existing, err := powercutOwnValues(dir, prefixes)
	if err != nil {
		fail(err)
	}
	say("ready")
	var wg sync.WaitGroup
	for _, w := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix, viaCLI := prefixOf(w), w == 2
			vals := map[string][]byte{} // this goroutine's keys and values
			for k, v := range existing {
				if strings.HasPrefix(k, prefix) {
					vals[k] = v
				}
			}
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			stream := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(w)})
			value := func() []byte {
				var n int
				switch r := rng.IntN(100); {
				case r < 50:
					n = rng.IntN(4 << 10)
				case r < 85:
					n = rng.IntN(64 << 10)
				default:
					n = rng.IntN(512 << 10)
				}
				b := make([]byte, n)
				stream.Read(b)
				return b
			}
			known := func() []string {
				ks := make([]string, 0, len(vals))
				for k := range vals {
					ks = append(ks, k)
				}
				slices.Sort(ks)
				return ks
			}
			for seq := 0; ; seq++ {
				ks := known()
				r := rng.IntN(100)
				var key string
				if r < 55 {
					key = fmt.Sprintf("%shot%d", prefix, rng.IntN(4))
				} else {
					key = fmt.Sprintf("%snew-%d-%d", prefix, os.Getpid(), seq)
				}
				switch {
				case len(ks) > 0 && (r < 8 || len(ks) > 16 && r < 40): // unlink
					key = ks[rng.IntN(len(ks))]
					say("intent rm %s", key)
					if viaCLI {
						if err := runCLI(nil, "rm", crashScope, key); err != nil {
							fail(err)
						}
					} else if err := os.Remove(filepath.Join(dir, key)); err != nil {
						fail(err)
					}
					say("ack rm %s", key)
					delete(vals, key)
				case !viaCLI && len(ks) > 0 && r >= 90: // rename, over a key or to a new name
					from := ks[rng.IntN(len(ks))]
					to := fmt.Sprintf("%smv-%d-%d", prefix, os.Getpid(), seq)
					if r >= 95 {
						to = ks[rng.IntN(len(ks))]
					}
					if to == from {
						continue
					}
					say("intent mv %s %s %s", from, to, hashOf(vals[from]))
					if err := os.Rename(filepath.Join(dir, from), filepath.Join(dir, to)); err != nil {
						fail(err)
					}
					say("ack mv %s %s", from, to)
					vals[to] = vals[from]
					delete(vals, from)
				case viaCLI:
					data := value()
					say("intent put %s %s %d", key, hashOf(data), len(data))
					if err := runCLI(data, "put", crashScope, key, "-"); err != nil {
						fail(err)
					}
					say("ack put %s %s", key, hashOf(data))
					vals[key] = data
				case vals[key] != nil && r%4 == 0: // append
					extra := make([]byte, rng.IntN(16<<10+1))
					stream.Read(extra)
					data := append(bytes.Clone(vals[key]), extra...)
					say("intent put %s %s %d", key, hashOf(data), len(data))
					f, err := os.OpenFile(filepath.Join(dir, key), os.O_WRONLY|os.O_APPEND, 0)
					if err != nil {
						fail(err)
					}
					if err := writeInChunks(f, data[len(vals[key]):], rng); err != nil {
						fail(err)
					}
					if err := f.Close(); err != nil {
						fail(err)
					}
					say("ack put %s %s", key, hashOf(data))
					vals[key] = data
				default: // what `echo > KEY` does; a tenth fsync before close
					data := value()
					say("intent put %s %s %d", key, hashOf(data), len(data))
					f, err := os.OpenFile(filepath.Join(dir, key), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
					if err != nil {
						fail(err)
					}
					if err := writeInChunks(f, data, rng); err != nil {
						fail(err)
					}
					if r%10 == 1 {
						if err := f.Sync(); err != nil {
							fail(err)
						}
						say("ack put %s %s", key, hashOf(data)) // fsync returned 0
						if err := f.Close(); err != nil {
							fail(err)
						}
					} else {
						if err := f.Close(); err != nil {
							fail(err)
						}
						say("ack put %s %s", key, hashOf(data))
					}
					vals[key] = data
				}
			}
		}()
	}
	wg.Wait()
}

// powercutOwnValues reads what the keys of dir with one of prefixes hold
// now (from the rounds before): a writer's own keys. The other writer
// process starts at the same time and is already removing and renaming its
// own keys, so a name of its listed here may be gone by the time it is
// opened: reading it would fail with ENOENT, through no fault of the mount.
func powercutOwnValues(dir string, prefixes []string) (map[string][]byte, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	own := map[string][]byte{}
	for _, e := range ents {
		n := e.Name()
		if !slices.ContainsFunc(prefixes, func(p string) bool { return strings.HasPrefix(n, p) }) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			return nil, err
		}
		own[n] = b
	}
	return own, nil
}

// TestPowerCutWriterReadsOwnKeys: a writer's first read of the scope
// leaves the other writer's keys alone. A name that is listed but gone at
// the open (here a dangling symlink, as the other writer's rm or mv between
// the listing and the open leaves it) fails only a writer that reads it;
// the CLI writer read the mount writer's keys, and failed a cut in 25.
func TestPowerCutWriterReadsOwnKeys(t *testing.T) {
	// scope makes a directory of files (name: content) and of names gone
	// at the open (content "gone": a dangling symlink).
	scope := func(files map[string]string) string {
		dir := t.TempDir()
		for n, v := range files {
			var err error
			if v == "gone" {
				err = os.Symlink(filepath.Join(dir, "nowhere"), filepath.Join(dir, n))
			} else {
				err = os.WriteFile(filepath.Join(dir, n), []byte(v), 0o644)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	for _, c := range []struct {
		prefixes string
		files    map[string]string
		want     map[string]string // nil: the read fails with ENOENT
	}{
		{"c-", map[string]string{"c-a": "ca", "w0-hot1": "w0", "w0-mv-13107-233": "gone", "w1-new-763-156": "gone"},
			map[string]string{"c-a": "ca"}},
		{"w0- w1-", map[string]string{"w0-hot3": "w0", "w1-new-1-2": "w1", "c-a": "ca", "c-gone": "gone"},
			map[string]string{"w0-hot3": "w0", "w1-new-1-2": "w1"}},
		// A writer's own key gone is no race of the harness: it fails.
		{"c-", map[string]string{"c-a": "ca", "c-gone": "gone"}, nil},
	} {
		got, err := powercutOwnValues(scope(c.files), strings.Fields(c.prefixes))
		switch {
		case c.want == nil && !errors.Is(err, os.ErrNotExist):
			t.Errorf("writer of %s in %q: %v, want ENOENT", c.prefixes, c.files, err)
		case c.want == nil:
		case err != nil:
			t.Errorf("writer of %s in %q: %v", c.prefixes, c.files, err)
		case !maps.EqualFunc(got, c.want, func(b []byte, s string) bool { return string(b) == s }):
			t.Errorf("writer of %s in %q read %q, want %q", c.prefixes, c.files, got, c.want)
		}
	}
}

// pcOp is an announced operation.
type pcOp struct {
	kind    string // put, rm, mv
	key, to string // to: mv only
	value   string // put: the new value's SHA-256; mv: the value moved
}

// pcRound is one round: the workload up to the cut and what it announced.
type pcRound struct {
	t       *testing.T
	model   map[string]string // acknowledged state: key -> SHA-256
	pending map[string]*pcOp  // ops in flight by key (a rename under both)
	acks    int
	intents int
	ready   bool
}

func (r *pcRound) handle(line string) {
	f := strings.Fields(line)
	bad := func() { r.t.Errorf("the writer said %q (in flight: %v)", line, r.pending) }
	switch {
	case len(f) == 1 && f[0] == "ready":
		r.ready = true
	case len(f) == 5 && f[0] == "intent" && f[1] == "put":
		r.pending[f[2]] = &pcOp{kind: "put", key: f[2], value: f[3]}
		r.intents++
	case len(f) == 3 && f[0] == "intent" && f[1] == "rm":
		r.pending[f[2]] = &pcOp{kind: "rm", key: f[2]}
		r.intents++
	case len(f) == 5 && f[0] == "intent" && f[1] == "mv":
		if r.model[f[2]] != f[4] {
			bad()
		}
		op := &pcOp{kind: "mv", key: f[2], to: f[3], value: f[4]}
		r.pending[f[2]], r.pending[f[3]] = op, op
		r.intents++
	case len(f) == 4 && f[0] == "ack" && f[1] == "put":
		op := r.pending[f[2]]
		if op == nil || op.kind != "put" || op.value != f[3] {
			bad()
			return
		}
		delete(r.pending, f[2])
		r.model[f[2]] = f[3]
		r.acks++
	case len(f) == 3 && f[0] == "ack" && f[1] == "rm":
		if op := r.pending[f[2]]; op == nil || op.kind != "rm" {
			bad()
			return
		}
		delete(r.pending, f[2])
		delete(r.model, f[2])
		r.acks++
	case len(f) == 4 && f[0] == "ack" && f[1] == "mv":
		op := r.pending[f[2]]
		if op == nil || op.kind != "mv" || op.to != f[3] {
			bad()
			return
		}
		delete(r.pending, f[2])
		delete(r.pending, f[3])
		r.model[f[3]] = op.value
		delete(r.model, f[2])
		r.acks++
	default:
		bad()
	}
}

// pcStats is what the test saw, for its log.
type pcStats struct {
	cuts, flushCuts, images, acks, checked int
	inflight, inflightOld, inflightNew     int
	pieces, fsyncs, writes                 int64
	modes                                  map[string]int
}

func TestPowerCut(t *testing.T) {
	requireLoop(t)
	// Checkpoints every dozen puts or so, so that cuts fall before, in and
	// after them: the daemons inherit the environment.
	t.Setenv(checkpointChangesEnv, "48")
	iters := iterations(t, powercutItersEnv, 3, 2)
	seed := crashSeed()
	t.Logf("seed %d (set %s to replay the same choices), %d cuts", seed, crashSeedEnv, iters)
	rng := rand.New(rand.NewPCG(seed, 13))
	image := mkfsImage(t, powercutDiskSize)
	model := map[string]string{}
	st := pcStats{modes: map[string]int{}}
	start := time.Now()
	for it := 0; it < iters; it++ {
		image, model = powercutOnce(t, it, image, model, rng, &st)
		if t.Failed() {
			t.Fatalf("cut %d failed (seed %d)", it, seed)
		}
	}
	t.Logf("%d cuts (%d at a flush) in %v, %d images checked (%v): %d acknowledged operations; %d acknowledged values checked, %d operations in flight at a cut seen old %d times and new %d times; %d writes and %d flushes reached the disk, %d pieces (4 KiB or less) unflushed at the cuts; %d keys at the end",
		st.cuts, st.flushCuts, time.Since(start).Round(time.Millisecond), st.images, st.modes, st.acks, st.checked, st.inflight, st.inflightOld, st.inflightNew, st.writes, st.fsyncs, st.pieces, len(model))
	if st.acks == 0 || st.fsyncs == 0 {
		t.Fatal("no acknowledged operation or no flush: the test tested nothing")
	}
}

// powercutOnce runs one round from image and model, cuts, checks images of
// the cut, and returns the image and model the next round starts from.
func powercutOnce(t *testing.T, it int, image map[int64][]byte, model map[string]string, rng *rand.Rand, st *pcStats) (map[int64][]byte, map[string]string) {
	t.Helper()
	tmp := t.TempDir()
	disk := newRecDisk(powercutDiskSize, image)
	srv := serveDisk(t, disk)
	loop := attachLoop(t, srv.path(), true)
	if it == 0 {
		t.Logf("%s over FUSE: dio=%s, write_cache=%q, fua=%s", loop.dev, loop.sysfs("loop/dio"), loop.sysfs("queue/write_cache"), loop.sysfs("queue/fua"))
	}
	if wc := loop.sysfs("queue/write_cache"); wc != "write back" {
		// With a write-through cache the block layer drops flushes, and
		// what the disk calls unflushed would in fact be durable.
		t.Fatalf("%s has write_cache %q, want \"write back\"", loop.dev, wc)
	}
	ext := filepath.Join(tmp, "ext4")
	mountExt4(t, loop.dev, ext)
	storeDir, point := filepath.Join(ext, "store"), filepath.Join(tmp, "mnt")
	if err := os.MkdirAll(point, 0o755); err != nil {
		t.Fatal(err)
	}
	d := mountDaemon(t, storeDir, point)
	t.Cleanup(disk.unfreeze) // before anything unmounts (cleanups run last first)

	// The workload, up to the cut.
	r := &pcRound{t: t, model: maps.Clone(model), pending: map[string]*pcOp{}}
	// Two writer processes: the one that writes through the mount must
	// not fork (the close of a descriptor at a child's exec publishes a
	// value half written: see "Known limits"), so the CLI runs from the
	// other.
	childSeed := strconv.FormatUint(rng.Uint64(), 10)
	lines := make(chan string)
	var readers sync.WaitGroup
	var writers []*exec.Cmd
	var werr bytes.Buffer // both writers' stderr
	var werrMu sync.Mutex
	wdone := false
	t.Cleanup(func() {
		if !wdone {
			for _, w := range writers {
				_ = syscall.Kill(-w.Process.Pid, syscall.SIGKILL)
				_ = w.Wait()
			}
		}
	})
	for _, role := range []string{"mount", "cli"} {
		w := exec.Command(os.Args[0], "-test.run=^TestPowerCutWriter$", "-test.count=1")
		w.Env = append(os.Environ(), crashChildEnv+"="+powercutWriterMode, powercutRoleEnv+"="+role,
			powercutDirEnv+"="+filepath.Join(point, crashScope), powercutStoreEnv+"="+storeDir,
			powercutCLIEnv+"="+cliPath(t), crashSeedEnv+"="+childSeed)
		w.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // its CLI children die with it
		w.Stderr = lockedWriter{&werrMu, &werr}
		stdout, err := w.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := w.Start(); err != nil {
			t.Fatal(err)
		}
		writers = append(writers, w)
		readers.Add(1)
		go func() {
			defer readers.Done()
			buf := make([]byte, 0, 64<<10)
			chunk := make([]byte, 4096)
			for {
				n, err := stdout.Read(chunk)
				buf = append(buf, chunk[:n]...)
				for {
					i := bytes.IndexByte(buf, '\n')
					if i < 0 {
						break
					}
					lines <- string(buf[:i])
					buf = buf[i+1:]
				}
				if err != nil {
					return
				}
			}
		}()
	}
	go func() { readers.Wait(); close(lines) }()
	stderr := func() string { werrMu.Lock(); defer werrMu.Unlock(); return werr.String() }
	waitWriters := func() {
		for _, w := range writers {
			_ = w.Wait()
		}
		wdone = true
	}
	// A third of the cuts come 100-1500 ms after the writer is ready,
	// a third 0-2 ms after its n-th operation began, and a third when the
	// n-th flush with at least 1, 8 or 24 pieces to flush reaches the disk
	// (cut before it is done, with the most in the volatile cache).
	cutAfter, how := -1, rng.IntN(3)
	var timer, flushCut <-chan time.Time
	switch how {
	case 1:
		cutAfter = 3 + rng.IntN(40)
	case 2:
		done := disk.armFlushCut(1+rng.IntN(50), []int{1, 8, 24}[rng.IntN(3)])
		c := make(chan time.Time)
		go func() { <-done; close(c) }()
		flushCut = c
	}
	safety := time.After(60 * time.Second)
wait:
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				waitWriters()
				t.Fatalf("the writers stopped before the cut:\n%s", stderr())
			}
			wasReady, intents := r.ready, r.intents
			r.handle(line)
			switch {
			case !wasReady && r.ready && how == 0:
				timer = time.After(time.Duration(100+rng.IntN(1400)) * time.Millisecond)
			case !wasReady && r.ready:
				timer = time.After(10 * time.Second) // should the writer stall
			case r.intents != intents && r.intents == cutAfter:
				timer = time.After(time.Duration(rng.IntN(2000)) * time.Microsecond)
			}
		case <-timer:
			break wait
		case <-flushCut:
			st.flushCuts++
			break wait
		case <-safety:
			t.Fatalf("the writers did not get going within 60 s:\n%s", stderr())
		}
	}

	// The cut. Then SIGKILL the writer (and its CLI children) and the
	// daemon, and only then let the disk go (dropping what it is given):
	// a killed writer waiting for the daemon's answer to a request cannot
	// die before the daemon answers or dies, nor the daemon while it
	// waits for the disk. No line comes from the writer after the kill,
	// so an ack it wrote after the cut still counts: an operation cannot
	// complete after the cut if it needed a flush then.
	cut := disk.cut()
	dst := disk.snapshotStats()
	st.cuts++
	st.pieces += int64(len(cut.pending))
	st.fsyncs += dst.fsyncs
	st.writes += dst.writes
	for _, w := range writers {
		_ = syscall.Kill(-w.Process.Pid, syscall.SIGKILL)
	}
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
		t.Errorf("kill the daemon: %v", err)
	}
	disk.unfreeze()
	// A daemon killed while it sent the kernel an invalidation that waits
	// for a directory lock held by a request of the writer's cannot die,
	// and that request waits for it: abort the connection (a power cut
	// is not gentle either).
	if err := fs.AbortConnection(point); err != nil {
		t.Errorf("abort the mount's connection: %v", err)
	}
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		for line := range lines {
			r.handle(line)
		}
	}()
	select {
	case <-drained:
	case <-time.After(30 * time.Second):
		t.Fatalf("the killed writers (pid %d) did not end within 30 s:\n%s", writers[0].Process.Pid, threadStates(writers[0].Process.Pid))
	}
	waitWriters()
	// Killed by SIGKILL, a writer says nothing more: anything on its
	// stderr is an operation that failed before the cut.
	if msg := stderr(); msg != "" {
		t.Errorf("cut %d: a writer failed before the cut:\n%s", it, msg)
	}
	if !waitFor(20*time.Second, func() bool { return processGone(d.pid) }) {
		t.Fatalf("the daemon (pid %d) survived SIGKILL:\n%s", d.pid, threadStates(d.pid))
	}
	if how := stopMount(point, storeDir); !strings.Contains(how, "connection aborted") && how != "unmounted" {
		t.Errorf("tearing down the dead mount: %s", how)
	}
	unmountExt4(t, ext)
	loop.detach(t)
	if err := srv.server.Unmount(); err != nil {
		t.Errorf("unmount the disk: %v", err)
	}
	st.acks += r.acks
	if dst.fsyncs == 0 {
		t.Errorf("the disk saw %d writes and no flush", dst.writes)
	}

	// The images of the cut: none, all, a random subset and a prefix of
	// the unflushed writes (in a random order, all four every time).
	modes := []string{"none", "all", "random", "prefix"}
	rng.Shuffle(len(modes), func(i, j int) { modes[i], modes[j] = modes[j], modes[i] })
	var next map[int64][]byte
	var nextModel map[string]string
	for _, mode := range modes {
		keep := func(int) bool { return false }
		desc := mode
		switch mode {
		case "all":
			keep = func(int) bool { return true }
		case "random":
			p := rng.Float64()
			bits := make([]bool, len(cut.pending))
			kept := 0
			for i := range bits {
				bits[i] = rng.Float64() < p
				if bits[i] {
					kept++
				}
			}
			keep = func(i int) bool { return bits[i] }
			desc = fmt.Sprintf("random %d of %d", kept, len(bits))
		case "prefix":
			n := 0
			if len(cut.pending) > 0 {
				n = rng.IntN(len(cut.pending) + 1)
			}
			keep = func(i int) bool { return i < n }
			desc = fmt.Sprintf("first %d of %d", n, len(cut.pending))
		}
		img, m := powercutCheck(t, it, desc, cut, keep, r, st)
		st.images++
		st.modes[mode]++
		if t.Failed() {
			t.Errorf("cut %d, image %q: %d writes and %d flushes before the cut, %d unflushed pieces; in flight: %s",
				it, desc, dst.writes, dst.fsyncs, len(cut.pending), r.inflight())
			return nil, nil
		}
		next, nextModel = img, m
	}
	return next, nextModel
}

func (r *pcRound) inflight() string {
	var s []string
	for k, op := range r.pending {
		s = append(s, fmt.Sprintf("%s:%s %s->%s %s", k, op.kind, op.key, op.to, show(op.value)))
	}
	slices.Sort(s)
	return "[" + strings.Join(s, ", ") + "]"
}

// powercutCheck writes the image of the cut that keep selects, mounts it,
// checks the store on it, and returns the image after the journal replay
// and the model of what the store holds.
func powercutCheck(t *testing.T, it int, desc string, cut diskCut, keep func(int) bool, r *pcRound, st *pcStats) (map[int64][]byte, map[string]string) {
	t.Helper()
	tmp := t.TempDir()
	file := filepath.Join(tmp, "image")
	if err := cut.writeImage(file, keep); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(file)
	loop := attachLoop(t, file, false)
	ext := filepath.Join(tmp, "ext4")
	mountExt4(t, loop.dev, ext) // replays the journal
	storeDir := filepath.Join(ext, "store")

	// A restarted daemon's fsck, before anything else opens the store.
	if r := runCLI(t, nil, "--store", storeDir, "fsck"); r.code != 0 || !strings.HasSuffix(r.stdout, ": clean\n") {
		t.Errorf("cut %d, image %q: iriskvfs fsck: %s", it, desc, r)
	}
	s, err := store.Open(storeDir, store.Options{})
	if err != nil {
		t.Fatalf("cut %d, image %q: open the store: %v", it, desc, err)
	}
	got := map[string]string{}
	ents, err := s.List(crashScope)
	if err != nil {
		t.Errorf("cut %d, image %q: list: %v", it, desc, err)
	}
	for _, e := range ents {
		got[e.Key] = crashRead(t, s, e.Key)
		if got[e.Key] != hex.EncodeToString(e.Fingerprint[:]) {
			t.Errorf("cut %d, image %q: %s reads as %s, listed with %x", it, desc, e.Key, show(got[e.Key]), e.Fingerprint)
		}
	}
	// Keys that are not listed must not be readable either.
	for k := range r.model {
		if _, ok := got[k]; !ok {
			if v := crashRead(t, s, k); v != "" {
				t.Errorf("cut %d, image %q: %s is not listed but reads as %s", it, desc, k, show(v))
			}
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("cut %d, image %q: close the store: %v", it, desc, err)
	}

	// The check: acknowledged state, but for the keys in flight.
	keys := map[string]bool{}
	for k := range r.model {
		keys[k] = true
	}
	for k := range got {
		keys[k] = true
	}
	for k := range r.pending {
		keys[k] = true
	}
	seenOps := map[*pcOp]bool{}
	for k := range keys {
		op := r.pending[k]
		if op == nil {
			if got[k] != r.model[k] {
				t.Errorf("cut %d, image %q: %s holds %s, want %s (acknowledged)", it, desc, k, show(got[k]), show(r.model[k]))
			} else if got[k] != "" {
				st.checked++
			}
			continue
		}
		if seenOps[op] {
			continue
		}
		seenOps[op] = true
		st.inflight++
		var old, new bool
		switch op.kind {
		case "put":
			old, new = got[k] == r.model[k], got[k] == op.value
		case "rm":
			old, new = got[k] == r.model[k], got[k] == ""
		case "mv":
			old = got[op.key] == r.model[op.key] && got[op.to] == r.model[op.to]
			new = got[op.key] == "" && got[op.to] == op.value
		}
		switch {
		case new:
			st.inflightNew++
		case old:
			st.inflightOld++
		default:
			t.Errorf("cut %d, image %q: %s in flight: %s holds %s (%s: %s), want its old value %s or the new one",
				it, desc, op.kind, k, show(got[k]), op.to, show(got[op.to]), show(r.model[k]))
		}
	}

	unmountExt4(t, ext)
	loop.detach(t)
	// On the file, not the loop device: another test may be attaching or
	// detaching loop devices at the same time.
	if out, err := exec.Command("e2fsck", "-fn", file).CombinedOutput(); err != nil {
		t.Errorf("cut %d, image %q: e2fsck -fn after the replay: %v\n%s", it, desc, err, out)
	}
	img, _, err := readImage(file)
	if err != nil {
		t.Fatal(err)
	}
	return img, got
}

// lockedWriter serialises writes to w.
type lockedWriter struct {
	mu *sync.Mutex
	w  *bytes.Buffer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
