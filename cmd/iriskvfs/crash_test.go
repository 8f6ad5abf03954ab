//go:build linux

package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// The crash test runs this test binary again as a child (crashChildEnv set,
// TestCrashChild selected) that writes to a store in a loop and announces
// every operation on stdout:
//
//	ready                        the store is open
//	intent put KEY SHA256 SIZE   about to put
//	ack put KEY SHA256           Put returned nil
//	intent rm KEY                about to delete
//	ack rm KEY                   Delete returned nil
//
// Each line is one write(2) of less than PIPE_BUF bytes, so a line is never
// torn, and an ack is written only after the operation returned. The parent
// kills the child with SIGKILL at a random moment, then checks the store.
const (
	crashStoreEnv   = "IRISKVFS_CRASH_STORE"
	crashSeedEnv    = "IRISKVFS_CRASH_SEED"
	crashItersEnv   = "IRISKVFS_CRASH_ITERATIONS"
	crashScope      = "artifacts"
	crashLargeLimit = 1 << 20 // an intent at least this large is a "large put"
)

// crashShared are values several keys may hold at once, so that kills also
// land on puts and deletes of shared (deduplicated) value files.
var crashShared = func() [][]byte {
	out := [][]byte{{}, []byte("shared value\n"), make([]byte, 100<<10)}
	rand.NewChaCha8([32]byte{42}).Read(out[2])
	return out
}()

// TestCrashChild is the child's loop; it runs only inside TestCrashKill.
func TestCrashChild(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("the child process of TestCrashKill")
	}
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	s, err := store.Open(os.Getenv(crashStoreEnv), store.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: open:", err)
		os.Exit(3)
	}
	// Never outlive a parent that lost track of us.
	time.AfterFunc(2*time.Minute, func() { os.Exit(4) })

	entries, err := s.List(crashScope)
	if err != nil {
		fmt.Fprintln(os.Stderr, "child: list:", err)
		os.Exit(3)
	}
	var known []string // live keys, for deletes
	for _, e := range entries {
		known = append(known, e.Key)
	}
	has := func(k string) bool {
		for _, x := range known {
			if x == k {
				return true
			}
		}
		return false
	}
	say := announcer()
	rng := rand.New(rand.NewPCG(seed, 0x1a2b))
	stream := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(seed >> 24)})
	say("ready")
	for seq := 0; ; seq++ {
		r := rng.IntN(100)
		if len(known) > 0 && (r < 10 || len(known) > 40 && r < 50) {
			i := rng.IntN(len(known))
			key := known[i]
			say("intent rm %s", key)
			if err := s.Delete(crashScope, key); err != nil {
				fmt.Fprintln(os.Stderr, "child: rm:", err)
				os.Exit(3)
			}
			say("ack rm %s", key)
			known = append(known[:i], known[i+1:]...)
			continue
		}
		var key string
		if r < 60 {
			key = fmt.Sprintf("hot%d", rng.IntN(5)) // rewritten over and over
		} else {
			key = fmt.Sprintf("new-%d-%d", os.Getpid(), seq)
		}
		var data []byte
		switch v := rng.IntN(100); {
		case v < 15:
			data = crashShared[rng.IntN(len(crashShared))]
		case v < 22:
			data = make([]byte, crashLargeLimit+rng.IntN(5<<20))
			stream.Read(data)
		default:
			data = make([]byte, rng.IntN(256<<10+1))
			stream.Read(data)
		}
		sum := sha256.Sum256(data)
		hexSum := hex.EncodeToString(sum[:])
		say("intent put %s %s %d", key, hexSum, len(data))
		if _, err := s.Put(crashScope, key, bytes.NewReader(data), store.PutOptions{}); err != nil {
			fmt.Fprintln(os.Stderr, "child: put:", err)
			os.Exit(3)
		}
		say("ack put %s %s", key, hexSum)
		if !has(key) {
			known = append(known, key)
		}
	}
}

// crashOp is one announced operation; value is the SHA-256 a put writes,
// "" for a delete.
type crashOp struct {
	key, value string
}

// crashIterations is how many kills a crash test makes: $IRISKVFS_CRASH_ITERATIONS
// (make stress), else normal, or short with -short.
func crashIterations(t *testing.T, normal, short int) int {
	return iterations(t, crashItersEnv, normal, short)
}

// iterations is $env (make stress), else normal, or short with -short.
func iterations(t *testing.T, env string, normal, short int) int {
	if v := os.Getenv(env); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", env, v)
		}
		return n
	}
	if testing.Short() {
		return short
	}
	return normal
}

// crashSeed is the seed a crash test runs with: IRISKVFS_CRASH_SEED to
// replay one a failure printed, else a fresh one.
func crashSeed() uint64 {
	if v := os.Getenv(crashSeedEnv); v != "" {
		seed, _ := strconv.ParseUint(v, 10, 64)
		return seed
	}
	return uint64(time.Now().UnixNano())
}

// writeInChunks writes b to f in writes of random sizes up to 96 KiB, so a
// kill can land between any two of them.
func writeInChunks(f *os.File, b []byte, rng *rand.Rand) error {
	for rest := b; len(rest) > 0; {
		n := min(len(rest), 1+rng.IntN(96<<10))
		if _, err := f.Write(rest[:n]); err != nil {
			return err
		}
		rest = rest[n:]
	}
	return nil
}

// TestCrashKill kills a writing process with SIGKILL at random moments, many
// times over the same store, and after each kill checks that the store opens,
// every acknowledged value reads back intact (a key the child was writing
// when it died holds its old value or its new one), deleted keys stay
// deleted, no unknown key appears, and fsck is clean.
func TestCrashKill(t *testing.T) {
	iters := crashIterations(t, 40, 10)
	seed := crashSeed()
	t.Logf("seed %d (set %s to replay), %d iterations", seed, crashSeedEnv, iters)
	rng := rand.New(rand.NewPCG(seed, 7))
	dir := filepath.Join(t.TempDir(), "store")
	model := map[string]string{} // key -> SHA-256 of its acknowledged value
	var stats struct{ acks, midLarge, inflight int }
	start := time.Now()
	for it := 0; it < iters; it++ {
		res := crashOnce(t, dir, rng.Uint64(), rng, model)
		stats.acks += res.acks
		if res.midLarge {
			stats.midLarge++
		}
		if res.inflight {
			stats.inflight++
		}
		if t.Failed() {
			t.Fatalf("iteration %d failed (seed %d)", it, seed)
		}
	}
	t.Logf("%d kills in %v: %d acknowledged operations, %d kills during a large put, %d with an operation in flight, %d keys at the end",
		iters, time.Since(start).Round(time.Millisecond), stats.acks, stats.midLarge, stats.inflight, len(model))
	if stats.acks == 0 {
		t.Fatal("the child never acknowledged an operation: the test tested nothing")
	}
}

type crashResult struct {
	acks     int
	midLarge bool // killed while a large put was in flight
	inflight bool // killed with an operation announced but not acknowledged
}

func crashOnce(t *testing.T, dir string, childSeed uint64, rng *rand.Rand, model map[string]string) crashResult {
	t.Helper()
	var res crashResult
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1")
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", crashStoreEnv+"="+dir, crashSeedEnv+"="+strconv.FormatUint(childSeed, 10))
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	killed := false
	kill := func() {
		if !killed {
			killed = true
			_ = cmd.Process.Signal(syscall.SIGKILL)
		}
	}
	defer kill()

	lines := make(chan string)
	var readErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		readErr = sc.Err()
	}()

	// Half the kills come at a random moment 5-150 ms after the store is
	// open; the others just after a large put was announced, so that the
	// child dies in the middle of streaming it or committing it.
	waitLarge := rng.IntN(2) == 0
	var pending *crashOp
	acked := map[string]*crashOp{} // this run's acknowledged ops, latest per key
	var timer <-chan time.Time
	safety := time.After(20 * time.Second)
	for lines != nil {
		select {
		case line, ok := <-lines:
			if !ok {
				lines = nil
				break
			}
			f := strings.Fields(line)
			switch {
			case len(f) == 1 && f[0] == "ready":
				if !waitLarge {
					timer = time.After(time.Duration(5+rng.IntN(146)) * time.Millisecond)
				} else {
					// In case no large put comes soon.
					timer = time.After(2 * time.Second)
				}
			case len(f) == 5 && f[0] == "intent" && f[1] == "put":
				pending = &crashOp{key: f[2], value: f[3]}
				if size, _ := strconv.Atoi(f[4]); waitLarge && !killed && size >= crashLargeLimit {
					res.midLarge = true
					timer = time.After(time.Duration(rng.IntN(3000)) * time.Microsecond)
				}
			case len(f) == 3 && f[0] == "intent" && f[1] == "rm":
				pending = &crashOp{key: f[2]}
			case len(f) == 4 && f[0] == "ack" && f[1] == "put",
				len(f) == 3 && f[0] == "ack" && f[1] == "rm":
				op := crashOp{key: f[2]}
				if f[1] == "put" {
					op.value = f[3]
				}
				if pending == nil || *pending != op {
					t.Errorf("ack %q does not match the announced operation %+v", line, pending)
				}
				pending = nil
				acked[op.key] = &op
				res.acks++
			}
		case <-timer:
			timer = nil
			kill()
		case <-safety:
			safety = nil
			kill()
			t.Errorf("the child did not get going within 20 s")
		}
	}
	wg.Wait()
	err = cmd.Wait()
	if readErr != nil {
		t.Errorf("reading the child's output: %v", readErr)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("the child did not die of SIGKILL: %v\nstderr:\n%s", err, stderr.String())
	}
	res.inflight = pending != nil

	// What the store must hold now: the last acknowledged value of each key,
	// except that the key of the operation in flight may hold either.
	for k, op := range acked {
		if op.value == "" {
			delete(model, k)
		} else {
			model[k] = op.value
		}
	}
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatalf("open after the kill: %v", err)
	}
	defer s.Close()
	check := func(key, got string) {
		want, ok := model[key]
		if got == want && (ok || got == "") {
			return
		}
		if pending != nil && pending.key == key && got == pending.value {
			return
		}
		t.Errorf("after the kill %s holds %s, want %s (in flight: %+v)", key, show(got), show(want), pending)
	}
	seen := map[string]bool{}
	for key := range model {
		seen[key] = true
		check(key, crashRead(t, s, key))
	}
	if pending != nil && !seen[pending.key] {
		seen[pending.key] = true
		check(pending.key, crashRead(t, s, pending.key))
	}
	// Adopt what the store holds for the key that was in flight.
	if pending != nil {
		if got := crashRead(t, s, pending.key); got == "" {
			delete(model, pending.key)
		} else {
			model[pending.key] = got
		}
	}
	entries, err := s.List(crashScope)
	if err != nil {
		t.Fatalf("list after the kill: %v", err)
	}
	if len(entries) != len(model) {
		t.Errorf("after the kill the store lists %d keys, want %d", len(entries), len(model))
	}
	for _, e := range entries {
		if want, ok := model[e.Key]; !ok || hex.EncodeToString(e.Fingerprint[:]) != want {
			t.Errorf("after the kill ls shows %s with fingerprint %x, want %s", e.Key, e.Fingerprint, show(want))
		}
	}
	rep, err := s.Fsck(false)
	if err != nil {
		t.Fatalf("fsck after the kill: %v", err)
	}
	if !rep.Clean() {
		for _, p := range rep.Problems {
			t.Errorf("fsck after the kill: %s", p)
		}
	}
	if names, _ := os.ReadDir(filepath.Join(dir, "tmp")); len(names) != 0 {
		t.Errorf("after open, tmp/ still holds %d files", len(names))
	}
	return res
}

// crashRead returns the SHA-256 of the value of key, verified by the store
// and hashed again here, or "" when the key does not exist.
func crashRead(t *testing.T, s *store.Store, key string) string {
	t.Helper()
	v, err := s.Open(crashScope, key)
	if errors.Is(err, store.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Errorf("read %s after the kill: %v", key, err)
		return "<unreadable>"
	}
	defer v.Close()
	h := sha256.New()
	n, err := io.Copy(h, v.Reader())
	if err != nil {
		t.Errorf("read %s after the kill: %v", key, err)
		return "<unreadable>"
	}
	if n != v.Entry.Size {
		t.Errorf("read %s after the kill: %d bytes, entry says %d", key, n, v.Entry.Size)
	}
	got := hex.EncodeToString(h.Sum(nil))
	if got != hex.EncodeToString(v.Entry.Fingerprint[:]) {
		t.Errorf("read %s after the kill: content hashes to %s, entry says %x", key, got, v.Entry.Fingerprint)
	}
	return got
}

func show(sum string) string {
	if sum == "" {
		return "nothing"
	}
	return sum[:min(12, len(sum))]
}

// TestCrashKillCLI kills the real CLI in the middle of a put streamed from a
// pipe that keeps feeding it, and at random moments of a finite put: the old
// value stays intact (or, for a put that had completed, the new one is
// there) and fsck is clean.
func TestCrashKillCLI(t *testing.T) {
	bin := cliPath(t)
	dir := filepath.Join(t.TempDir(), "store")
	oldValue := []byte("the old value, which must survive\n")
	s, err := store.Open(dir, store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(crashScope, "doc", bytes.NewReader(oldValue), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	oldSum := sha256.Sum256(oldValue)
	current := hex.EncodeToString(oldSum[:])

	verify := func(allowed ...string) string {
		t.Helper()
		s, err := store.Open(dir, store.Options{})
		if err != nil {
			t.Fatalf("open after the kill: %v", err)
		}
		defer s.Close()
		got := crashRead(t, s, "doc")
		ok := false
		for _, a := range allowed {
			ok = ok || got == a
		}
		if !ok {
			t.Errorf("after the kill doc holds %s, want one of %q", show(got), allowed)
		}
		rep, err := s.Fsck(false)
		if err != nil {
			t.Fatalf("fsck after the kill: %v", err)
		}
		for _, p := range rep.Problems {
			t.Errorf("fsck after the kill: %s", p)
		}
		return got
	}

	// 1. Mid-stream: stdin never ends; kill once the CLI has staged 2 MiB.
	t.Run("mid-stream", func(t *testing.T) {
		for i := 0; i < 3; i++ {
			cmd := exec.Command(bin, "--store", dir, "put", crashScope, "doc", "-")
			in, err := cmd.StdinPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			fed := make(chan error, 1)
			go func() {
				_, err := io.Copy(in, rand.NewChaCha8([32]byte{byte(i)})) // endless
				fed <- err
			}()
			staged := waitStaged(filepath.Join(dir, "tmp"), 2<<20, 20*time.Second)
			_ = cmd.Process.Signal(syscall.SIGKILL)
			err = cmd.Wait()
			in.Close()
			<-fed
			if !staged {
				t.Fatalf("the CLI never staged 2 MiB (exit: %v, stderr: %s)", err, stderr.String())
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the CLI did not die of SIGKILL: %v", err)
			}
			verify(current) // an unfinished put never shows
		}
	})

	// 2. A finite put (4 MiB) killed at a random moment: while starting,
	// streaming, syncing or committing, or after it finished.
	t.Run("random-moment", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
		n := 12
		if testing.Short() {
			n = 4
		}
		var finished, killedOld, killedNew int
		for i := 0; i < n; i++ {
			value := make([]byte, 4<<20)
			rand.NewChaCha8([32]byte{byte(i), 9}).Read(value)
			sum := sha256.Sum256(value)
			newSum := hex.EncodeToString(sum[:])
			cmd := exec.Command(bin, "--store", dir, "put", crashScope, "doc")
			cmd.Stdin = bytes.NewReader(value)
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
			_ = cmd.Process.Signal(syscall.SIGKILL)
			err := cmd.Wait()
			if err == nil {
				finished++
				current = verify(newSum) // acknowledged: it must be there
				continue
			}
			var ee *exec.ExitError
			if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
				t.Fatalf("the CLI failed: %v", err)
			}
			got := verify(current, newSum)
			if got == newSum {
				killedNew++
			} else {
				killedOld++
			}
			current = got
		}
		t.Logf("%d puts: %d finished, %d killed keeping the old value, %d killed after publishing the new one",
			n, finished, killedOld, killedNew)
	})
}

// waitStaged waits until a file in dir holds at least size bytes.
func waitStaged(dir string, size int64, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		ents, _ := os.ReadDir(dir)
		for _, e := range ents {
			if fi, err := e.Info(); err == nil && fi.Size() >= size {
				return true
			}
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// announcer returns how a writer child tells the test what it does: one
// line per call, one write(2) each (os.Stdout is unbuffered), never two
// interleaved; a child whose parent stopped listening exits (status 5).
func announcer() func(format string, args ...any) {
	var mu sync.Mutex
	return func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		if _, err := fmt.Fprintf(os.Stdout, format+"\n", args...); err != nil {
			os.Exit(5)
		}
	}
}
