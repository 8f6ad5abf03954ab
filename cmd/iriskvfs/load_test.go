package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/fs"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// Load and resource bounds.
//
// TestLoad drives a real daemon (mount --daemon) with 64 clients through
// the mount and 64 through its REST handler (the admin socket) at once, for
// a bounded time: each client checks every value it reads against its own
// model (its keys are its own), and the shared keys' values must be
// complete, published ones. No request may fail except as the contract
// allows (ENOENT / 404 for a key the model says is absent). It reports the
// throughput reached and the daemon's descriptors, threads and RSS, which
// must not grow once it is warm.
//
// TestResourceBounds mounts in this process (the daemon's stack: store,
// mount, admin socket) and runs the same load in rounds: after each round,
// at rest, the goroutines and open descriptors must be where they were after
// the first, and the live heap within the LRU bound plus a constant.
//
// IRISKVFS_LOAD_TIME (a duration) is how long TestLoad runs (3s);
// IRISKVFS_RESOURCE_ROUNDS how many rounds TestResourceBounds runs (4).

const (
	loadTimeEnv       = "IRISKVFS_LOAD_TIME"
	resourceRoundsEnv = "IRISKVFS_RESOURCE_ROUNDS"
	loadScope         = "load"
	loadConfigYAML    = "scopes:\n  load: {quota: 4GB, ttl: 1h}\n  bulk: {quota: 1GB, ttl: 1h}\n"
)

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		t.Fatalf("%s=%q: want a duration", name, v)
	}
	return d
}

// loadValue is the content of version ver of key: sizes mostly small, some
// up to 1 MiB, so that the LRU keeps turning over.
func loadValue(key string, ver int) []byte {
	seed := sha256.Sum256([]byte(key + "/" + strconv.Itoa(ver)))
	rng := rand.New(rand.NewPCG(binary.LittleEndian.Uint64(seed[:]), 1))
	var n int
	switch r := rng.IntN(100); {
	case r < 70:
		n = 1 + rng.IntN(8<<10)
	case r < 95:
		n = 8<<10 + rng.IntN(120<<10)
	default:
		n = 128<<10 + rng.IntN(896<<10)
	}
	b := make([]byte, n)
	rand.NewChaCha8(seed).Read(b)
	return b
}

// sharedValue is a self-describing value of a shared key: header, then a
// body derived from (writer, seq) byte by byte.
func sharedValue(writer, seq, size int) []byte {
	size = max(size, 24)
	b := make([]byte, size)
	copy(b, "LOADSH01")
	binary.BigEndian.PutUint32(b[8:], uint32(writer))
	binary.BigEndian.PutUint32(b[12:], uint32(seq))
	binary.BigEndian.PutUint64(b[16:], uint64(size))
	for i := 24; i < size; i++ {
		b[i] = byte(writer*7 + seq*13 + i*31)
	}
	return b
}

func checkSharedValue(b []byte) (writer, seq int, err error) {
	if len(b) < 24 || string(b[:8]) != "LOADSH01" {
		return 0, 0, fmt.Errorf("no header (%d bytes)", len(b))
	}
	writer, seq = int(binary.BigEndian.Uint32(b[8:])), int(binary.BigEndian.Uint32(b[12:]))
	if size := int(binary.BigEndian.Uint64(b[16:])); size != len(b) {
		return writer, seq, fmt.Errorf("value %d/%d says %d bytes, read %d", writer, seq, size, len(b))
	}
	for i := 24; i < len(b); i++ {
		if b[i] != byte(writer*7+seq*13+i*31) {
			return writer, seq, fmt.Errorf("value %d/%d torn at byte %d of %d", writer, seq, i, len(b))
		}
	}
	return writer, seq, nil
}

// loadRun is one run of the load.
type loadRun struct {
	point     string // mount point
	client    *api.Client
	mount     int // clients through the mount
	apiN      int // clients through the API
	dur       time.Duration
	seed      uint64
	keyPrefix string // distinguishes rounds

	mountOps, apiOps, bytesOut, bytesIn atomic.Int64

	mu        sync.Mutex
	errs      []string
	published map[[2]int]bool // shared values whose write returned 0
	seen      [][2]int        // shared values read
}

func (l *loadRun) fail(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 20 {
		l.errs = append(l.errs, fmt.Sprintf(format, args...))
	}
}

type loadModel map[string]struct {
	hash [32]byte
	size int
}

func (l *loadRun) run() {
	l.published = map[[2]int]bool{}
	deadline := time.Now().Add(l.dur)
	var wg sync.WaitGroup
	for i := range l.mount {
		wg.Add(1)
		go func() { defer wg.Done(); l.mountClient(i, deadline) }()
	}
	for i := range l.apiN {
		wg.Add(1)
		go func() { defer wg.Done(); l.apiClient(i, deadline) }()
	}
	wg.Wait()
	for _, s := range l.seen {
		if !l.published[s] {
			l.fail("a shared value that was never published was read: writer %d seq %d", s[0], s[1])
		}
	}
}

func (l *loadRun) sharedPath(i int) string {
	return filepath.Join(l.point, loadScope, fmt.Sprintf("%ssh-%d", l.keyPrefix, i))
}

func (l *loadRun) readShared(who string, b []byte) {
	w, seq, err := checkSharedValue(b)
	if err != nil {
		l.fail("%s: a shared value: %v", who, err)
		return
	}
	l.mu.Lock()
	l.seen = append(l.seen, [2]int{w, seq})
	l.mu.Unlock()
}

func (l *loadRun) mountClient(id int, deadline time.Time) {
	rng := rand.New(rand.NewPCG(l.seed, uint64(id)))
	model := loadModel{}
	ver := map[string]int{}
	key := func() string { return fmt.Sprintf("%sm%d-%d", l.keyPrefix, id, rng.IntN(4)) }
	path := func(k string) string { return filepath.Join(l.point, loadScope, k) }
	who := fmt.Sprintf("mount client %d", id)
	seq := 0
	for time.Now().Before(deadline) {
		l.mountOps.Add(1)
		switch r := rng.IntN(100); {
		case r < 35:
			k := key()
			ver[k]++
			b := loadValue(k, ver[k])
			if err := os.WriteFile(path(k), b, 0o644); err != nil {
				l.fail("%s: write %s: %v", who, k, err)
				return
			}
			l.bytesIn.Add(int64(len(b)))
			model[k] = struct {
				hash [32]byte
				size int
			}{sha256.Sum256(b), len(b)}
		case r < 70:
			k := key()
			b, err := os.ReadFile(path(k))
			m, ok := model[k]
			switch {
			case !ok && errors.Is(err, os.ErrNotExist):
			case err != nil:
				l.fail("%s: read %s: %v (in the model: %v)", who, k, err, ok)
				return
			case !ok || sha256.Sum256(b) != m.hash:
				l.fail("%s: read %s: %d bytes that are not its value (model: %d bytes, present %v)", who, k, len(b), m.size, ok)
				return
			default:
				l.bytesOut.Add(int64(len(b)))
			}
		case r < 80:
			b, err := os.ReadFile(l.sharedPath(rng.IntN(8)))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				l.fail("%s: read a shared key: %v", who, err)
				return
			}
			l.bytesOut.Add(int64(len(b)))
			l.readShared(who, b)
		case r < 87:
			seq++
			b := sharedValue(id, seq, 24+rng.IntN(64<<10))
			if err := os.WriteFile(l.sharedPath(rng.IntN(8)), b, 0o644); err != nil {
				l.fail("%s: write a shared key: %v", who, err)
				return
			}
			l.bytesIn.Add(int64(len(b)))
			l.mu.Lock()
			l.published[[2]int{id, seq}] = true
			l.mu.Unlock()
		case r < 93:
			k := key()
			err := os.Remove(path(k))
			_, ok := model[k]
			if ok && err != nil || !ok && !errors.Is(err, os.ErrNotExist) {
				l.fail("%s: unlink %s: %v (in the model: %v)", who, k, err, ok)
				return
			}
			delete(model, k)
		case r < 97:
			from, to := key(), key()
			err := os.Rename(path(from), path(to))
			m, ok := model[from]
			if ok && err != nil || !ok && !errors.Is(err, os.ErrNotExist) {
				l.fail("%s: rename %s %s: %v (in the model: %v)", who, from, to, err, ok)
				return
			}
			if ok && from != to {
				model[to] = m
				delete(model, from)
			}
		default:
			k := key()
			fi, err := os.Stat(path(k))
			m, ok := model[k]
			if ok && (err != nil || fi.Size() != int64(m.size)) || !ok && !errors.Is(err, os.ErrNotExist) {
				l.fail("%s: stat %s: %v %v (model: %d bytes, present %v)", who, k, fi, err, m.size, ok)
				return
			}
		}
	}
}

func (l *loadRun) apiClient(id int, deadline time.Time) {
	ctx := context.Background()
	rng := rand.New(rand.NewPCG(l.seed, uint64(1000+id)))
	model := loadModel{}
	ver := map[string]int{}
	key := func() string { return fmt.Sprintf("%sa%d-%d", l.keyPrefix, id, rng.IntN(4)) }
	who := fmt.Sprintf("API client %d", id)
	notFound := func(err error) bool {
		var e *api.Error
		return errors.As(err, &e) && e.Status == 404
	}
	for time.Now().Before(deadline) {
		l.apiOps.Add(1)
		switch r := rng.IntN(100); {
		case r < 40:
			k := key()
			ver[k]++
			b := loadValue(k, ver[k])
			e, err := l.client.Put(ctx, loadScope, k, bytes.NewReader(b), api.PutOptions{})
			sum := sha256.Sum256(b)
			if err != nil || e.Fingerprint != fmt.Sprintf("%x", sum) {
				l.fail("%s: put %s: %v (fingerprint %s)", who, k, err, e.Fingerprint)
				return
			}
			l.bytesIn.Add(int64(len(b)))
			model[k] = struct {
				hash [32]byte
				size int
			}{sum, len(b)}
		case r < 75:
			k := key()
			_, body, err := l.client.Get(ctx, loadScope, k)
			m, ok := model[k]
			if !ok && notFound(err) {
				continue
			}
			if err != nil {
				l.fail("%s: get %s: %v (in the model: %v)", who, k, err, ok)
				return
			}
			b, err := io.ReadAll(body)
			body.Close()
			if err != nil || !ok || sha256.Sum256(b) != m.hash {
				l.fail("%s: get %s: %d bytes that are not its value (%v; model: %d bytes, present %v)", who, k, len(b), err, m.size, ok)
				return
			}
			l.bytesOut.Add(int64(len(b)))
		case r < 85:
			_, body, err := l.client.Get(ctx, loadScope, fmt.Sprintf("%ssh-%d", l.keyPrefix, rng.IntN(8)))
			if notFound(err) {
				continue
			}
			if err != nil {
				l.fail("%s: get a shared key: %v", who, err)
				return
			}
			b, err := io.ReadAll(body)
			body.Close()
			if err != nil {
				l.fail("%s: get a shared key: %v", who, err)
				return
			}
			l.bytesOut.Add(int64(len(b)))
			l.readShared(who, b)
		case r < 93:
			k := key()
			err := l.client.Delete(ctx, loadScope, k)
			_, ok := model[k]
			if ok && err != nil || !ok && !notFound(err) {
				l.fail("%s: delete %s: %v (in the model: %v)", who, k, err, ok)
				return
			}
			delete(model, k)
		default:
			entries, err := l.client.List(ctx, loadScope)
			if err != nil {
				l.fail("%s: list: %v", who, err)
				return
			}
			mine := map[string]string{}
			prefix := fmt.Sprintf("%sa%d-", l.keyPrefix, id)
			for _, e := range entries {
				if strings.HasPrefix(e.Key, prefix) {
					mine[e.Key] = e.Fingerprint
				}
			}
			if len(mine) != len(model) {
				l.fail("%s: list shows %d of my keys, the model has %d", who, len(mine), len(model))
				return
			}
			for k, m := range model {
				if mine[k] != fmt.Sprintf("%x", m.hash) {
					l.fail("%s: list shows %s with fingerprint %q", who, k, mine[k])
					return
				}
			}
		}
	}
}

// procCounts are a process's descriptors, threads and resident memory.
type procCounts struct {
	fds, threads int
	rssKiB       int64
}

func (p procCounts) String() string {
	return fmt.Sprintf("%d fds, %d threads, RSS %.1f MiB", p.fds, p.threads, float64(p.rssKiB)/1024)
}

func countsOf(pid int) procCounts {
	var c procCounts
	if ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid)); err == nil {
		c.fds = len(ents)
	}
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for _, line := range strings.Split(string(b), "\n") {
		name, val, _ := strings.Cut(line, ":")
		f := strings.Fields(val)
		if len(f) == 0 {
			continue
		}
		switch name {
		case "Threads":
			c.threads, _ = strconv.Atoi(f[0])
		case "VmRSS":
			c.rssKiB, _ = strconv.ParseInt(f[0], 10, 64)
		}
	}
	return c
}

// TestLoad: 64 clients through the mount and 64 through the API of a real
// daemon at once; see the comment at the top of this file.
func TestLoad(t *testing.T) {
	requireFUSE(t)
	dur := envDuration(t, loadTimeEnv, 3*time.Second)
	tmp := t.TempDir()
	cfg := filepath.Join(tmp, "config.yaml")
	if err := os.WriteFile(cfg, []byte(loadConfigYAML), 0o644); err != nil {
		t.Fatal(err)
	}
	storeDir, point := filepath.Join(tmp, "store"), filepath.Join(tmp, "mnt")
	d := mountDaemon(t, storeDir, point, "--config", cfg)
	client := api.NewSocketClient(api.SocketPath(storeDir))
	tr := client.HTTP.Transport.(*http.Transport)
	tr.MaxIdleConnsPerHost = 64

	before := countsOf(d.pid)
	seed := uint64(time.Now().UnixNano())
	// A short warm-up, then the run that counts.
	warm := &loadRun{point: point, client: client, mount: 64, apiN: 64, dur: dur / 4, seed: seed, keyPrefix: "w"}
	warm.run()
	tr.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	warmCounts := countsOf(d.pid)
	l := &loadRun{point: point, client: client, mount: 64, apiN: 64, dur: dur, seed: seed + 1}
	start := time.Now()
	l.run()
	elapsed := time.Since(start)
	during := countsOf(d.pid)
	tr.CloseIdleConnections()
	time.Sleep(200 * time.Millisecond)
	after := countsOf(d.pid)
	for _, e := range append(warm.errs, l.errs...) {
		t.Errorf("seed %d: %s", seed, e)
	}
	secs := elapsed.Seconds()
	t.Logf("seed %d, %v with 64 mount clients and 64 API clients: mount %d ops (%.0f/s), API %d ops (%.0f/s), %.1f MB/s written, %.1f MB/s read",
		seed, elapsed.Round(time.Millisecond), l.mountOps.Load(), float64(l.mountOps.Load())/secs, l.apiOps.Load(), float64(l.apiOps.Load())/secs,
		float64(l.bytesIn.Load())/secs/1e6, float64(l.bytesOut.Load())/secs/1e6)
	t.Logf("the daemon: before %v; warm %v; under load %v; at rest after %v", before, warmCounts, during, after)
	if after.fds > warmCounts.fds+4 {
		t.Errorf("the daemon's descriptors grew: %d when warm, %d after the run", warmCounts.fds, after.fds)
	}
	if res := runCLI(t, nil, "--store", storeDir, "fsck"); res.code != 0 || !strings.HasSuffix(res.stdout, ": clean\n") {
		t.Errorf("fsck after the load: %s", res)
	}
}

// TestResourceBounds: see the comment at the top of this file.
func TestResourceBounds(t *testing.T) {
	requireFUSE(t)
	rounds := 4
	if v := os.Getenv(resourceRoundsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 2 {
			t.Fatalf("%s=%q: want a number of rounds, at least 2", resourceRoundsEnv, v)
		}
		rounds = n
	}
	const (
		hotBytes      = 8 << 20
		hotFirstBytes = 2 << 20
		// The heap beside the LRU: bbolt's and go-fuse's buffers, the
		// requests in flight (at rest: none), this test's models.
		heapSlack = 16 << 20
	)
	policy, err := quota.Parse([]byte(loadConfigYAML))
	if err != nil {
		t.Fatal(err)
	}
	tmp := t.TempDir()
	point := filepath.Join(tmp, "mnt")
	log := slog.New(slog.DiscardHandler)
	s, err := store.Open(filepath.Join(tmp, "store"), store.Options{
		Policy: policy, Logger: log, HotBytes: hotBytes,
		HotFirstScopes: []string{"instructions"}, HotFirstBytes: hotFirstBytes,
		TrackReads: []string{"instructions"},
	})
	if err != nil {
		t.Fatal(err)
	}
	m, err := fs.MountStore(point, s, fs.MountConfig{Options: fs.Options{UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Logger: log}})
	if err != nil {
		s.Close()
		t.Fatal(err)
	}
	admin, err := api.ServeAdmin(s.Dir(), settled{api.Local{Store: s}, m.Settle}, log)
	if err != nil {
		m.Unmount()
		s.Close()
		t.Fatal(err)
	}
	defer func() {
		admin.Close()
		if err := m.Unmount(); err != nil {
			t.Errorf("unmount: %v", err)
			_ = fs.LazyUnmount(point)
		}
		s.Close()
	}()
	client := api.NewSocketClient(api.SocketPath(s.Dir()))
	tr := client.HTTP.Transport.(*http.Transport)

	atRest := func() (goroutines, fds int, heap uint64) {
		tr.CloseIdleConnections()
		// Let the server's connection goroutines and the kernel's releases
		// (RELEASE, FORGET arrive after close) settle.
		var prev int
		for i := 0; i < 50; i++ {
			time.Sleep(20 * time.Millisecond)
			n := runtime.NumGoroutine()
			if n == prev {
				break
			}
			prev = n
		}
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return runtime.NumGoroutine(), countsOf(os.Getpid()).fds, ms.HeapAlloc
	}
	// Values that together are several times the LRU: each round reads them
	// all through the mount, so the LRU turns over at its bound.
	const bulkN, bulkSize = 48, 512 << 10
	for i := range bulkN {
		b := make([]byte, bulkSize)
		rand.NewChaCha8([32]byte{byte(i), 42}).Read(b)
		if _, err := s.Put("bulk", fmt.Sprintf("b%d", i), bytes.NewReader(b), store.PutOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	seed := uint64(time.Now().UnixNano())
	var base struct {
		goroutines, fds int
	}
	var maxHeap uint64
	for round := range rounds {
		// Each round starts from an empty scope, so that the store stays
		// the same size; values of other scopes come and go with it.
		if _, err := s.Clear(loadScope); err != nil {
			t.Fatal(err)
		}
		m.Settle()
		l := &loadRun{point: point, client: client, mount: 16, apiN: 16, dur: time.Second, seed: seed + uint64(round),
			keyPrefix: fmt.Sprintf("r%d-", round)}
		var bulkRead sync.WaitGroup
		for w := range 4 {
			bulkRead.Add(1)
			go func() {
				defer bulkRead.Done()
				for i := w; i < bulkN; i += 4 {
					if b, err := os.ReadFile(filepath.Join(point, "bulk", fmt.Sprintf("b%d", i))); err != nil || len(b) != bulkSize {
						l.fail("bulk read b%d: %d bytes, %v", i, len(b), err)
					}
				}
			}()
		}
		l.run()
		bulkRead.Wait()
		for _, e := range l.errs {
			t.Errorf("round %d: %s", round, e)
		}
		g, fds, heap := atRest()
		maxHeap = max(maxHeap, heap)
		hot, hotB := 0, int64(0)
		if st, err := s.Stats(); err == nil {
			hot, hotB = st.HotEntries, st.HotBytes
		}
		t.Logf("round %d: %d mount + %d API ops; at rest: %d goroutines, %d fds, heap %.1f MiB (LRU %d values, %.1f MiB)",
			round, l.mountOps.Load(), l.apiOps.Load(), g, fds, float64(heap)/(1<<20), hot, float64(hotB)/(1<<20))
		if round == 0 {
			base.goroutines, base.fds = g, fds
			continue
		}
		if g > base.goroutines+4 {
			t.Errorf("round %d: %d goroutines at rest, %d after the first round", round, g, base.goroutines)
		}
		if fds > base.fds+4 {
			t.Errorf("round %d: %d descriptors open at rest, %d after the first round", round, fds, base.fds)
		}
		if heap > hotBytes+hotFirstBytes+heapSlack {
			t.Errorf("round %d: live heap %.1f MiB, more than the LRU's %.0f MiB plus %.0f MiB", round,
				float64(heap)/(1<<20), float64(hotBytes+hotFirstBytes)/(1<<20), float64(heapSlack)/(1<<20))
		}
	}
	t.Logf("%d rounds: goroutines %d, descriptors %d after the first; the largest live heap %.1f MiB (bound: LRU %.0f MiB + %.0f MiB)",
		rounds, base.goroutines, base.fds, float64(maxHeap)/(1<<20), float64(hotBytes+hotFirstBytes)/(1<<20), float64(heapSlack)/(1<<20))
	rep, err := s.Fsck(false)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range rep.Problems {
		t.Errorf("fsck: %s", p)
	}
}
