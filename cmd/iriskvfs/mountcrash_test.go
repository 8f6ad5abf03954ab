package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The mount crash test SIGKILLs the mount daemon while a writer process
// writes through the mount, over and over, and after each kill mounts
// again on the same (now dead) mount point. The writer is this test binary
// again (crashChildEnv=mount-writer, TestMountCrashWriter selected); two
// goroutines write disjoint keys and announce every operation on stdout:
//
//	ready                        the mount is there
//	intent put KEY SHA256 SIZE   about to open(O_TRUNC)/write/close
//	ack put KEY SHA256           close() returned 0
//	intent rm KEY                about to unlink
//	ack rm KEY                   unlink returned 0
//
// Each line is one write(2) of less than PIPE_BUF bytes, so lines never
// tear. Once the daemon is dead the writer's calls fail (ENOTCONN) and it
// exits: that is expected.
const (
	mountWriterMode = "mount-writer"
	mcrashDirEnv    = "IRISKVFS_MCRASH_DIR"
	mcrashScope     = "artifacts"
)

// TestMountCrashWriter is the writer; it runs only inside
// TestMountCrashKill.
func TestMountCrashWriter(t *testing.T) {
	if os.Getenv(crashChildEnv) != mountWriterMode {
		t.Skip("the writer process of TestMountCrashKill")
	}
	dir := os.Getenv(mcrashDirEnv)
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	time.AfterFunc(2*time.Minute, func() { os.Exit(4) }) // never outlive a lost parent
	say := announcer()
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "writer: at %d: %v\n", time.Now().UnixNano(), err)
		os.Exit(3)
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		fail(err)
	}
	var existing []string
	for _, e := range ents {
		if n := e.Name(); n[0] != '_' && n[0] != '.' {
			existing = append(existing, n)
		}
	}
	say("ready")
	var wg sync.WaitGroup
	for w := 0; w < 2; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix := fmt.Sprintf("w%d-", w)
			var known []string // this writer's live keys
			for _, k := range existing {
				if strings.HasPrefix(k, prefix) {
					known = append(known, k)
				}
			}
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			stream := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(w)})
			for seq := 0; ; seq++ {
				r := rng.IntN(100)
				if len(known) > 0 && (r < 10 || len(known) > 20 && r < 50) {
					i := rng.IntN(len(known))
					key := known[i]
					say("intent rm %s", key)
					if err := os.Remove(filepath.Join(dir, key)); err != nil {
						fail(err)
					}
					say("ack rm %s", key)
					known = append(known[:i], known[i+1:]...)
					continue
				}
				var key string
				if r < 60 {
					key = fmt.Sprintf("%shot%d", prefix, rng.IntN(4)) // rewritten over and over
				} else {
					key = fmt.Sprintf("%snew-%d-%d", prefix, os.Getpid(), seq)
				}
				data := make([]byte, rng.IntN(256<<10+1))
				stream.Read(data)
				sum := sha256.Sum256(data)
				hexSum := hex.EncodeToString(sum[:])
				say("intent put %s %s %d", key, hexSum, len(data))
				f, err := os.OpenFile(filepath.Join(dir, key), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
				if err != nil {
					fail(err)
				}
				if err := writeInChunks(f, data, rng); err != nil {
					fail(err)
				}
				if err := f.Close(); err != nil {
					fail(err)
				}
				say("ack put %s %s", key, hexSum)
				if !slices.Contains(known, key) {
					known = append(known, key)
				}
			}
		}()
	}
	wg.Wait()
}

// TestMountCrashKill: SIGKILL the daemon in the middle of writes through
// the mount, many times. Each time `mount --daemon` on the same mount point
// must clear the dead mount by itself and succeed; every value whose
// close() returned 0 reads back intact through the new mount (a key with an
// operation in flight holds its old value or the new one), nothing else
// appears, and `iriskvfs fsck` (through the daemon's socket) is clean.
//
// A daemon killed while its notifier was blocked in the kernel (sending an
// invalidation for a directory that a writer's request, waiting for the
// daemon, holds locked) cannot finish dying: the mount hangs instead of
// going dead, the writer stays blocked, and the store stays locked. The
// remount must get out of that too (it aborts the connection).
func TestMountCrashKill(t *testing.T) {
	requireFUSE(t)
	// Checkpoints among the kills (the daemons inherit the environment).
	t.Setenv(checkpointChangesEnv, "48")
	iters := crashIterations(t, 15, 5)
	seed := crashSeed()
	t.Logf("seed %d (set %s to replay), %d kills", seed, crashSeedEnv, iters)
	rng := rand.New(rand.NewPCG(seed, 11))
	tmp := t.TempDir()
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	model := map[string]string{} // key -> SHA-256 of its acknowledged value
	var w *mountWriter           // the writer of the last round
	var stats struct{ acks, inflight, hung, errs int }
	start := time.Now()
	for it := 0; ; it++ {
		if w != nil && w.ended {
			// An ordinary kill: the connection was aborted when the
			// daemon died, and the mount is dead.
			if _, ok := mountAt(point); !ok || !waitFor(5*time.Second, func() bool { return isDead(point) }) {
				t.Fatalf("iteration %d: the killed daemon's mount is not a dead mount (in mountinfo: %v)", it, ok)
			}
		} else if w != nil {
			stats.hung++
			t.Logf("iteration %d: the killed daemon could not exit; the writer is blocked on the hung mount", it)
			if stats.hung%2 == 0 {
				// Every other time, unmount gets out of it instead.
				r := runCLI(t, nil, "unmount", point)
				if r.code != 0 || r.stdout != "cleared dead mount "+point+"\n" {
					t.Fatalf("iteration %d: unmount of the hung mount: %s", it, r)
				}
				if !w.drain(20 * time.Second) {
					t.Fatalf("iteration %d: the writer is still blocked after unmount", it)
				}
			}
		}
		d := mountDaemon(t, storeDir, point) // clears the dead (or hung) mount
		if w != nil {
			if !w.ended && !w.drain(20*time.Second) {
				t.Fatalf("iteration %d: the writer is still blocked after the remount", it)
			}
			w.check(storeDir)
			w.fold(model)
			stats.acks += w.acks
			if len(w.pending) > 0 {
				stats.inflight++
			}
			if w.stderr.Len() > 0 {
				stats.errs++
			}
		}
		var pending map[string]*crashOp
		if w != nil {
			pending = w.pending
		}
		mountCrashVerify(t, point, model, pending)
		if r := runCLI(t, nil, "--store", storeDir, "fsck"); r.code != 0 || !strings.HasSuffix(r.stdout, ": clean\n") {
			t.Errorf("iteration %d: fsck through the daemon: %s", it, r)
		}
		if t.Failed() {
			t.Fatalf("iteration %d failed (seed %d)", it, seed)
		}
		if it == iters {
			break
		}
		w = mountCrashOnce(t, point, d, rng.Uint64(), rng)
		if t.Failed() {
			t.Fatalf("iteration %d failed (seed %d)", it, seed)
		}
	}
	t.Logf("%d kills in %v: %d acknowledged operations, %d kills with an operation in flight, %d that left the daemon unable to exit, %d writers failing after the kill, %d keys at the end",
		iters, time.Since(start).Round(time.Millisecond), stats.acks, stats.inflight, stats.hung, stats.errs, len(model))
	if stats.acks == 0 {
		t.Fatal("the writer never acknowledged an operation: the test tested nothing")
	}
	if r := runCLI(t, nil, "unmount", point); r.code != 0 {
		t.Fatalf("unmount: %s", r)
	}
	if r := runCLI(t, nil, "--store", storeDir, "fsck"); r.code != 0 || !strings.HasSuffix(r.stdout, ": clean\n") {
		t.Errorf("offline fsck at the end: %s", r)
	}
}

// mountWriter is a running writer process and what it announced.
type mountWriter struct {
	t        *testing.T
	cmd      *exec.Cmd
	stderr   bytes.Buffer
	lines    chan string
	pending  map[string]*crashOp // announced, not acknowledged, by key
	acked    map[string]*crashOp // acknowledged, the latest by key
	acks     int
	intents  int
	ready    bool
	ended    bool
	exitErr  error
	killedAt time.Time // when the daemon was sent SIGKILL
}

func startMountWriter(t *testing.T, point string, seed uint64) *mountWriter {
	t.Helper()
	return startWriterChild(t, "TestMountCrashWriter",
		crashChildEnv+"="+mountWriterMode,
		mcrashDirEnv+"="+filepath.Join(point, mcrashScope), crashSeedEnv+"="+strconv.FormatUint(seed, 10))
}

// startWriterChild runs this test binary's test named run as a writer
// child with env added, its stdout lines on w.lines; the test's cleanup
// kills it unless it ended.
func startWriterChild(t *testing.T, run string, env ...string) *mountWriter {
	t.Helper()
	w := &mountWriter{t: t, lines: make(chan string), pending: map[string]*crashOp{}, acked: map[string]*crashOp{}}
	w.cmd = exec.Command(os.Args[0], "-test.run=^"+run+"$", "-test.count=1")
	w.cmd.Env = append(os.Environ(), env...)
	w.cmd.Stderr = &w.stderr
	stdout, err := w.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if !w.ended {
			_ = w.cmd.Process.Kill()
		}
	})
	go func() {
		defer close(w.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
	}()
	return w
}

// handle takes one announced line into account.
func (w *mountWriter) handle(line string) {
	f := strings.Fields(line)
	switch {
	case len(f) == 1 && f[0] == "ready":
		w.ready = true
	case len(f) == 5 && f[0] == "intent" && f[1] == "put":
		w.pending[f[2]] = &crashOp{key: f[2], value: f[3]}
		w.intents++
	case len(f) == 3 && f[0] == "intent" && f[1] == "rm":
		w.pending[f[2]] = &crashOp{key: f[2]}
	case len(f) == 4 && f[0] == "ack" && f[1] == "put",
		len(f) == 3 && f[0] == "ack" && f[1] == "rm":
		op := crashOp{key: f[2]}
		if f[1] == "put" {
			op.value = f[3]
		}
		if p := w.pending[op.key]; p == nil || *p != op {
			w.t.Errorf("ack %q does not match the announced operation %+v", line, p)
		}
		delete(w.pending, op.key)
		w.acked[op.key] = &op
		w.acks++
	default:
		w.t.Errorf("the writer said %q", line)
	}
}

// drain takes in the writer's lines until it ends (and reaps it), or until
// timeout; it reports whether the writer ended.
func (w *mountWriter) drain(timeout time.Duration) bool {
	deadline := time.After(timeout)
	for !w.ended {
		select {
		case line, ok := <-w.lines:
			if !ok {
				w.exitErr = w.cmd.Wait()
				w.ended = true
				break
			}
			w.handle(line)
		case <-deadline:
			return false
		}
	}
	return true
}

// writerFailRe is the writer's last words: "writer: at UNIXNANO: ERROR".
var writerFailRe = regexp.MustCompile(`^writer: at (\d+): (.*)$`)

// check requires the writer to have failed after the kill, the way a killed
// daemon makes calls fail, and in no other way:
//   - ENOTCONN: the connection is gone (the mount is dead);
//   - ECONNABORTED: the request was waiting when the connection went;
//   - EIO: the daemon was killed while writing the request's reply (the
//     kernel fails a request whose reply it could not copy with EIO).
func (w *mountWriter) check(storeDir string) {
	w.t.Helper()
	if w.exitErr == nil {
		w.t.Errorf("the writer exited 0 after the daemon was killed")
	}
	msg := strings.TrimSpace(w.stderr.String())
	if msg == "" {
		return
	}
	ok := true
	for _, line := range strings.Split(msg, "\n") { // one per writing goroutine
		m := writerFailRe.FindStringSubmatch(line)
		if m == nil {
			ok = false
			break
		}
		at, _ := strconv.ParseInt(m[1], 10, 64)
		ok = ok && at >= w.killedAt.UnixNano() && (strings.HasSuffix(m[2], "transport endpoint is not connected") ||
			strings.HasSuffix(m[2], "software caused connection abort") || strings.HasSuffix(m[2], "input/output error"))
	}
	if !ok {
		log, _ := os.ReadFile(filepath.Join(storeDir, "daemon.log"))
		var notes []string
		for _, l := range strings.Split(string(log), "\n") {
			if !strings.Contains(l, "level=INFO") {
				notes = append(notes, l)
			}
		}
		w.t.Errorf("the writer failed with %q (the daemon was killed at %d)\nthe daemons' log, less INFO lines:\n%s",
			msg, w.killedAt.UnixNano(), strings.Join(notes, "\n"))
	}
}

// fold applies the acknowledged operations to model.
func (w *mountWriter) fold(model map[string]string) {
	for k, op := range w.acked {
		if op.value == "" {
			delete(model, k)
		} else {
			model[k] = op.value
		}
	}
}

// mountCrashOnce starts a writer on the mount and kills the daemon at a
// random moment; it returns the writer, which has ended unless the daemon
// could not exit and left it blocked.
func mountCrashOnce(t *testing.T, point string, d *daemon, childSeed uint64, rng *rand.Rand) *mountWriter {
	t.Helper()
	w := startMountWriter(t, point, childSeed)
	// Half the kills come 5-150 ms after the writer started; the others a
	// few hundred µs after the n-th announced put, to land inside a write
	// or a close.
	killAfterIntent := -1
	if rng.IntN(2) == 0 {
		killAfterIntent = 1 + rng.IntN(30)
	}
	var timer <-chan time.Time
	safety := time.After(30 * time.Second)
	for {
		select {
		case line, ok := <-w.lines:
			if !ok {
				w.exitErr = w.cmd.Wait()
				w.ended = true
				t.Fatalf("the writer stopped before the daemon was killed: %v\nstderr:\n%s", w.exitErr, w.stderr.String())
			}
			wasReady, intents := w.ready, w.intents
			w.handle(line)
			switch {
			case !wasReady && w.ready && killAfterIntent < 0:
				timer = time.After(time.Duration(5+rng.IntN(146)) * time.Millisecond)
			case !wasReady && w.ready:
				timer = time.After(2 * time.Second) // should no put come
			case w.intents != intents && w.intents == killAfterIntent:
				timer = time.After(time.Duration(rng.IntN(1500)) * time.Microsecond)
			}
			continue
		case <-timer:
		case <-safety:
			t.Fatalf("the writer did not get going within 30 s:\n%s", w.stderr.String())
		}
		break
	}
	w.killedAt = time.Now()
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the daemon: %v", err)
	}
	// Gone, or dying: a thread of it may be stuck for good (see above).
	if !waitFor(10*time.Second, func() bool { return processGone(d.pid) || dying(d.pid) }) {
		t.Fatalf("the daemon (pid %d) survived SIGKILL:\n%s", d.pid, threadStates(d.pid))
	}
	// With the connection aborted every call fails at once; a writer still
	// there after a second is blocked on a mount that hangs.
	w.drain(time.Second)
	return w
}

// mountCrashVerify reads every key back through the mount: each holds its
// last acknowledged value, or, for a key with an operation in flight at the
// kill, possibly that operation's result; the scope lists nothing else.
// It adopts what an in-flight key holds into model.
func mountCrashVerify(t *testing.T, point string, model map[string]string, pending map[string]*crashOp) {
	t.Helper()
	dir := filepath.Join(point, mcrashScope)
	read := func(key string) string {
		b, err := os.ReadFile(filepath.Join(dir, key))
		if errors.Is(err, os.ErrNotExist) {
			return ""
		}
		if err != nil {
			t.Errorf("read %s through the new mount: %v", key, err)
			return "<unreadable>"
		}
		if fi, err := os.Stat(filepath.Join(dir, key)); err != nil {
			t.Errorf("stat %s: %v", key, err)
		} else if fi.Size() != int64(len(b)) {
			t.Errorf("stat %s says %d bytes, read %d", key, fi.Size(), len(b))
		}
		sum := sha256.Sum256(b)
		return hex.EncodeToString(sum[:])
	}
	got := map[string]string{}
	for key := range model {
		got[key] = read(key)
	}
	for key := range pending {
		got[key] = read(key)
	}
	for key, g := range got {
		want := model[key]
		if g == want {
			continue
		}
		if p := pending[key]; p != nil && g == p.value {
			continue
		}
		t.Errorf("after the kill %s holds %s, want %s (in flight: %+v)", key, show(g), show(want), pending[key])
	}
	for key := range pending {
		if got[key] == "" {
			delete(model, key)
		} else {
			model[key] = got[key]
		}
	}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatalf("readdir through the new mount: %v", err)
	}
	n := 0
	for _, e := range ents {
		if name := e.Name(); name[0] != '_' {
			n++
			if _, ok := model[name]; !ok {
				t.Errorf("after the kill the mount lists %s, which no acknowledged operation wrote", name)
			}
		}
	}
	if n != len(model) {
		t.Errorf("after the kill the mount lists %d keys, want %d", n, len(model))
	}
}

// threadStates describes the threads of pid: state and kernel stack.
func threadStates(pid int) string {
	var b strings.Builder
	status, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	b.Write(status)
	tasks, _ := filepath.Glob(fmt.Sprintf("/proc/%d/task/*", pid))
	for _, task := range tasks {
		stat, _ := os.ReadFile(filepath.Join(task, "stat"))
		stack, _ := os.ReadFile(filepath.Join(task, "stack"))
		fmt.Fprintf(&b, "%s: %s\n%s", task, stat, stack)
	}
	return b.String()
}
