package store_test

// Benchmarks for `make bench` (issue 2, "How fast"); results and method in
// docs/BENCHMARKS.md.
//
// Every store lives on the real disk, never on tmpfs: under
// $IRISKVFS_BENCH_DIR when set, else in the benchmark's temporary directory
// (under os.TempDir, which must then be on the disk to be measured). The
// large fixtures (stores of 1k and 100k keys, a 100 MiB value) are built at
// most once per process, inside the first benchmark that needs one, and kept
// for later runs in $IRISKVFS_BENCH_DIR/fixtures, or else in
// os.TempDir()/iriskvfs-bench-fixtures (about 0.55 GB; delete it at will: a
// missing or stale fixture is rebuilt).

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

const (
	benchScope          = "bench"
	benchHotSize        = 20 << 10 // the "small hot value" of GetHot
	benchHotKeys        = 64       // distinct hot values cycled through by GetHot
	benchFillerSize     = 1 << 10  // every other key of a fixture store
	benchPutSize        = 4 << 10  // PutDurable4K and its bare counterpart
	benchLargeSize      = 100 << 20
	benchFixtureVersion = "iriskvfs-bench-fixture v1"
)

// benchPolicy adds a scope with room for any fixture and no expiry, so that
// a kept fixture never ages out and quotas never refuse a benchmark's write.
func benchPolicy(tb testing.TB) *quota.Policy {
	p, err := quota.Parse([]byte("scopes:\n  " + benchScope + ": {quota: 1TB, ttl: 0}\n"))
	if err != nil {
		tb.Fatal(err)
	}
	return p
}

func benchOptions(tb testing.TB) store.Options {
	return store.Options{Policy: benchPolicy(tb)}
}

// benchScratchDir is a fresh directory on the real disk, removed after the
// run.
func benchScratchDir(b *testing.B) string {
	base := os.Getenv("IRISKVFS_BENCH_DIR")
	if base == "" {
		return b.TempDir()
	}
	if err := os.MkdirAll(base, 0o700); err != nil {
		b.Fatal(err)
	}
	d, err := os.MkdirTemp(base, "run-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// benchFixtureRoot holds the fixtures kept between runs.
func benchFixtureRoot() string {
	if base := os.Getenv("IRISKVFS_BENCH_DIR"); base != "" {
		return filepath.Join(base, "fixtures")
	}
	return filepath.Join(os.TempDir(), "iriskvfs-bench-fixtures")
}

// benchOpenSettled opens the store in dir and waits until the orphan sweep
// that Open starts in the background has finished, so that it does not
// compete with what is being measured (2 cores). The sweep is the one
// goroutine Open leaves running; its end is seen as the goroutine count
// falling back. The store is closed when the benchmark run ends.
func benchOpenSettled(b *testing.B, dir string) *store.Store {
	b.Helper()
	runtime.Gosched()
	base := runtime.NumGoroutine()
	s, err := store.Open(dir, benchOptions(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := s.Close(); err != nil { // a no-op if already closed
			b.Error(err)
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for runtime.NumGoroutine() > base && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	return s
}

func benchClose(b *testing.B, s *store.Store) {
	if err := s.Close(); err != nil {
		b.Fatal(err)
	}
}

// benchValue returns a deterministic value of size bytes, distinct for every
// (kind, i): its first 16 bytes carry both, the rest is pseudo-random.
func benchValue(kind, i uint64, size int) []byte {
	v := make([]byte, size)
	r := rand.NewChaCha8([32]byte{byte(kind), byte(i), byte(i >> 8), byte(i >> 16)})
	_, _ = r.Read(v)
	binary.BigEndian.PutUint64(v[0:], kind)
	binary.BigEndian.PutUint64(v[8:], i)
	return v
}

func benchKey(i int) string { return fmt.Sprintf("k%07d", i) }

// benchHotIndex lists the keys of a store of n keys that hold hot (20 KiB)
// values, spread evenly over the key space.
func benchHotIndex(n int) []int {
	out := make([]int, 0, benchHotKeys)
	for j := 0; j < benchHotKeys; j++ {
		out = append(out, j*n/benchHotKeys)
	}
	return out
}

type benchFixture struct {
	once sync.Once
	dir  string
	err  error
}

var (
	benchFixturesMu sync.Mutex
	benchFixtures   = map[string]*benchFixture{}
)

// benchKeepFixture returns the directory of the named fixture, building it
// with build (into a fresh directory) unless a complete one with the same
// description is kept from an earlier run and still passes check (the
// index's record format may have changed since).
func benchKeepFixture(b *testing.B, name, desc string, build, check func(s *store.Store) error) string {
	b.Helper()
	benchFixturesMu.Lock()
	f := benchFixtures[name]
	if f == nil {
		f = &benchFixture{}
		benchFixtures[name] = f
	}
	benchFixturesMu.Unlock()
	f.once.Do(func() {
		f.dir = filepath.Join(benchFixtureRoot(), name)
		marker := filepath.Join(f.dir, "fixture-complete")
		want := benchFixtureVersion + "\n" + desc + "\n"
		if got, err := os.ReadFile(marker); err == nil && string(got) == want {
			err := benchWithStore(b, f.dir, check)
			if err == nil {
				b.Logf("fixture %s: kept from an earlier run in %s", name, f.dir)
				return
			}
			b.Logf("fixture %s: rebuilding the one kept in %s: %v", name, f.dir, err)
		}
		if f.err = os.RemoveAll(f.dir); f.err != nil {
			return
		}
		if f.err = os.MkdirAll(f.dir, 0o700); f.err != nil {
			return
		}
		start := time.Now()
		if f.err = benchWithStore(b, f.dir, build); f.err != nil {
			return
		}
		if f.err = benchWithStore(b, f.dir, check); f.err != nil {
			return
		}
		b.Logf("fixture %s: built in %v in %s", name, time.Since(start).Round(time.Millisecond), f.dir)
		f.err = os.WriteFile(marker, []byte(want), 0o600)
	})
	if f.err != nil {
		b.Fatalf("fixture %s: %v", name, f.err)
	}
	return f.dir
}

// benchWithStore runs fn on the store in dir, opened for it alone.
func benchWithStore(b *testing.B, dir string, fn func(s *store.Store) error) error {
	s, err := store.Open(dir, benchOptions(b))
	if err != nil {
		return err
	}
	err = fn(s)
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

// benchKeyStore is a store whose bench scope holds n keys: benchHotKeys of
// them hold distinct 20 KiB values, the rest distinct 1 KiB values (so n
// blob files).
func benchKeyStore(b *testing.B, n int) string {
	name := fmt.Sprintf("keys-%d", n)
	desc := fmt.Sprintf("keys=%d hot=%dx%d filler=%d", n, benchHotKeys, benchHotSize, benchFillerSize)
	build := func(s *store.Store) error { return benchPopulate(s, n) }
	check := func(s *store.Store) error {
		es, err := s.List(benchScope) // decodes every record
		if err != nil {
			return err
		}
		if len(es) != n {
			return fmt.Errorf("%d keys, want %d", len(es), n)
		}
		for _, i := range benchHotIndex(n) {
			if es[i].Key != benchKey(i) || es[i].Size != benchHotSize {
				return fmt.Errorf("%s: not a hot value of %d bytes", es[i].Key, benchHotSize)
			}
		}
		return nil
	}
	return benchKeepFixture(b, name, desc, build, check)
}

// benchPopulate puts n keys with durable puts from many goroutines, so that
// the index commits of concurrent puts are shared (group commit) and the
// blob fsyncs overlap.
func benchPopulate(s *store.Store, n int) error {
	hot := map[int]bool{}
	for _, i := range benchHotIndex(n) {
		hot[i] = true
	}
	const workers = 64
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				v := benchValue(1, uint64(i), benchFillerSize)
				if hot[i] {
					v = benchValue(2, uint64(i), benchHotSize)
				}
				if _, err := s.Put(benchScope, benchKey(i), bytes.NewReader(v), store.PutOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	return <-errs
}

// benchHotStore opens the store of n keys and loads its hot values into the
// LRU; it returns the hot keys.
func benchHotStore(b *testing.B, n int) (*store.Store, []string) {
	s := benchOpenSettled(b, benchKeyStore(b, n))
	var keys []string
	for _, i := range benchHotIndex(n) {
		k := benchKey(i)
		v, _, err := s.Get(benchScope, k) // a miss: verified, then kept in the LRU
		if err != nil {
			b.Fatal(err)
		}
		if len(v) != benchHotSize {
			b.Fatalf("%s: %d bytes, want %d", k, len(v), benchHotSize)
		}
		keys = append(keys, k)
	}
	return s, keys
}

// benchAllHits fails b if any read since misses was not served by the LRU.
func benchAllHits(b *testing.B, s *store.Store, misses int64) {
	if m := s.Counters().Misses.Load() - misses; m != 0 {
		b.Fatalf("%d reads missed the LRU", m)
	}
}

// BenchmarkGetHot: store.Get of a 20 KiB value already in the LRU, cycling
// through 64 such keys spread over a scope of 1k or 100k keys. Get returns
// the caller its own copy of the value.
func BenchmarkGetHot(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%s", benchKilo(n)), func(b *testing.B) {
			s, keys := benchHotStore(b, n)
			misses := s.Counters().Misses.Load()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, _, err := s.Get(benchScope, keys[i%len(keys)]); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			benchAllHits(b, s, misses)
		})
	}
}

// BenchmarkOpenHot: the same reads the way the mount serves them, without
// a copy per read: store.Open, Value.ReadAt of the whole value into the
// caller's buffer, Close.
func BenchmarkOpenHot(b *testing.B) {
	for _, n := range []int{1_000, 100_000} {
		b.Run(fmt.Sprintf("keys=%s", benchKilo(n)), func(b *testing.B) {
			s, keys := benchHotStore(b, n)
			buf := make([]byte, benchHotSize)
			misses := s.Counters().Misses.Load()
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				v, err := s.Open(benchScope, keys[i%len(keys)])
				if err != nil {
					b.Fatal(err)
				}
				if n, err := v.ReadAt(buf, 0); n != benchHotSize || (err != nil && err != io.EOF) {
					b.Fatalf("read %d bytes: %v", n, err)
				}
				v.Close()
			}
			b.StopTimer()
			benchAllHits(b, s, misses)
		})
	}
}

func benchKilo(n int) string {
	if n%1000 == 0 {
		return fmt.Sprintf("%dk", n/1000)
	}
	return fmt.Sprint(n)
}

// BenchmarkPutDurable4K: one durable store.Put of a new 4 KiB value under a
// new key, one after another (no concurrency, so no shared commits).
func BenchmarkPutDurable4K(b *testing.B) {
	s := benchOpenSettled(b, benchScratchDir(b))
	run := rand.Uint64()
	b.SetBytes(benchPutSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v := benchValue(run, uint64(i), benchPutSize)
		if _, err := s.Put(benchScope, fmt.Sprintf("p%08d", i), bytes.NewReader(v), store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
	}
}

// benchBareDir mimics a store's blob layout without a store: tmp/ and 256
// shard directories.
type benchBareDir string

func newBenchBareDir(b *testing.B) benchBareDir {
	dir := benchScratchDir(b)
	if err := os.MkdirAll(filepath.Join(dir, "tmp"), 0o700); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < 256; i++ {
		if err := os.MkdirAll(filepath.Join(dir, "blobs", fmt.Sprintf("%02x", i)), 0o700); err != nil {
			b.Fatal(err)
		}
	}
	return benchBareDir(dir)
}

// write is the bare sequence a durable put cannot do without: create a
// temporary file, write the value, fsync, close, rename it into a shard
// directory, fsync that directory.
func (d benchBareDir) write(v []byte, i int) error {
	name := hex.EncodeToString(v[:16])
	tmpPath := filepath.Join(string(d), "tmp", name+".tmp")
	f, err := os.OpenFile(tmpPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(v); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	shard := filepath.Join(string(d), "blobs", fmt.Sprintf("%02x", i%256))
	if err := os.Rename(tmpPath, filepath.Join(shard, name)); err != nil {
		return err
	}
	dir, err := os.Open(shard)
	if err != nil {
		return err
	}
	err = dir.Sync()
	if cerr := dir.Close(); err == nil {
		err = cerr
	}
	return err
}

// BenchmarkBareWriteFsyncRename4K is the floor PutDurable4K is measured
// against, on the same disk: benchBareDir.write of a new 4 KiB value.
func BenchmarkBareWriteFsyncRename4K(b *testing.B) {
	d := newBenchBareDir(b)
	run := rand.Uint64()
	b.SetBytes(benchPutSize)
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if err := d.write(benchValue(run, uint64(i), benchPutSize), i); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutVsBare4KInterleaved alternates one durable put and one bare
// write+fsync+rename per iteration (in alternating order), so that both see
// the same disk at the same moment; it reports each one's mean and their
// ratio. ns/op is the pair.
func BenchmarkPutVsBare4KInterleaved(b *testing.B) {
	s := benchOpenSettled(b, benchScratchDir(b))
	d := newBenchBareDir(b)
	run := rand.Uint64()
	var tPut, tBare time.Duration
	put := func(i int) {
		v := benchValue(run, uint64(i), benchPutSize)
		t0 := time.Now()
		if _, err := s.Put(benchScope, fmt.Sprintf("p%08d", i), bytes.NewReader(v), store.PutOptions{}); err != nil {
			b.Fatal(err)
		}
		tPut += time.Since(t0)
	}
	bare := func(i int) {
		v := benchValue(run+1, uint64(i), benchPutSize)
		t0 := time.Now()
		if err := d.write(v, i); err != nil {
			b.Fatal(err)
		}
		tBare += time.Since(t0)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if i%2 == 0 {
			put(i)
			bare(i)
		} else {
			bare(i)
			put(i)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(tPut.Nanoseconds())/float64(b.N), "put-ns/op")
	b.ReportMetric(float64(tBare.Nanoseconds())/float64(b.N), "bare-ns/op")
	b.ReportMetric(float64(tPut)/float64(tBare), "put/bare")
}

// BenchmarkIndexCommit4K is the index's share of a put alone: one bbolt
// read-write transaction recording one 4 KiB entry, committed and synced.
func BenchmarkIndexCommit4K(b *testing.B) {
	db, err := index.Open(filepath.Join(benchScratchDir(b), "index.db"), []string{benchScope})
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	now := time.Now().UTC()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		e := index.Entry{
			Scope: benchScope, Key: fmt.Sprintf("p%08d", i), Size: benchPutSize,
			ContentType: "application/octet-stream", CreatedAt: now, ModTime: now, Mode: 0o644,
		}
		binary.BigEndian.PutUint64(e.Fingerprint[:], uint64(i))
		if err := db.Update(func(tx *index.Tx) error {
			_, _, err := tx.Put(e)
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPutDurable4KParallel: the same puts from many goroutines at once.
// ns/op is wall time per put; below the sequential figure when commits are
// shared (bbolt Batch coalesces index commits; concurrent fsyncs share
// journal commits).
func BenchmarkPutDurable4KParallel(b *testing.B) {
	for _, g := range []int{16, 64} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			s := benchOpenSettled(b, benchScratchDir(b))
			run := rand.Uint64()
			var seq atomic.Uint64
			procs := runtime.GOMAXPROCS(0)
			b.SetParallelism((g + procs - 1) / procs)
			b.SetBytes(benchPutSize)
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					i := seq.Add(1)
					v := benchValue(run, i, benchPutSize)
					if _, err := s.Put(benchScope, fmt.Sprintf("p%08d", i), bytes.NewReader(v), store.PutOptions{}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "puts/s")
		})
	}
}

// BenchmarkOpenStore: store.Open of a store of 100k keys (1 index file,
// 100k blob files), then Close. open-ns/op is Open alone, until it returns
// and the store serves requests. Close stops the background orphan sweep
// that Open started at its next shard directory and waits for it; the whole
// sweep is measured by BenchmarkOpenStoreFullSweep.
func BenchmarkOpenStore(b *testing.B) {
	b.Run("keys=100k", func(b *testing.B) {
		dir := benchKeyStore(b, 100_000)
		opts := benchOptions(b)
		var open time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			t0 := time.Now()
			s, err := store.Open(dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			open += time.Since(t0)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(open.Nanoseconds())/float64(b.N), "open-ns/op")
	})
}

// BenchmarkOpenStoreColdIndex: as BenchmarkOpenStore, with the index file
// dropped from the page cache before each Open (posix_fadvise DONTNEED on
// index.db only: the directories stay cached), as after a reboot.
func BenchmarkOpenStoreColdIndex(b *testing.B) {
	b.Run("keys=100k", func(b *testing.B) {
		dir := benchKeyStore(b, 100_000)
		opts := benchOptions(b)
		var open time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			if err := benchDropCache(filepath.Join(dir, "index.db")); err != nil {
				b.Fatal(err)
			}
			b.StartTimer()
			t0 := time.Now()
			s, err := store.Open(dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			open += time.Since(t0)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(open.Nanoseconds())/float64(b.N), "open-ns/op")
	})
}

func benchDropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED)
}

// BenchmarkOpenStoreFullSweep: store.Open of the same store, then waiting
// until the background orphan sweep has gone through all 100k blob files,
// then Close. (Close alone does not wait for the whole sweep: it stops it
// at the next shard directory.) sweep-ns/op is from Open's return to the
// sweep's end, seen within a millisecond.
func BenchmarkOpenStoreFullSweep(b *testing.B) {
	b.Run("keys=100k", func(b *testing.B) {
		dir := benchKeyStore(b, 100_000)
		opts := benchOptions(b)
		var sweep time.Duration
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			runtime.Gosched()
			base := runtime.NumGoroutine()
			s, err := store.Open(dir, opts)
			if err != nil {
				b.Fatal(err)
			}
			t0 := time.Now()
			for runtime.NumGoroutine() > base {
				time.Sleep(200 * time.Microsecond)
			}
			sweep += time.Since(t0)
			if err := s.Close(); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(sweep.Nanoseconds())/float64(b.N), "sweep-ns/op")
	})
}

// BenchmarkList: store.List of a scope of 100k keys (every entry decoded).
func BenchmarkList(b *testing.B) {
	b.Run("keys=100k", func(b *testing.B) {
		const n = 100_000
		s := benchOpenSettled(b, benchKeyStore(b, n))
		b.ReportAllocs()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			es, err := s.List(benchScope)
			if err != nil {
				b.Fatal(err)
			}
			if len(es) != n {
				b.Fatalf("listed %d entries, want %d", len(es), n)
			}
		}
	})
}

// BenchmarkOpenLarge: store.Open (+ Close) of a 100 MiB value. "first" is
// the first open in a freshly opened store, which hashes the whole blob;
// "cached" opens it again, when an fstat showing the same file suffices.
// The blob is in the page cache in both.
func BenchmarkOpenLarge(b *testing.B) {
	build := func(s *store.Store) error {
		r := io.LimitReader(rand.NewChaCha8([32]byte{'l', 'a', 'r', 'g', 'e'}), benchLargeSize)
		_, err := s.Put(benchScope, "large", r, store.PutOptions{})
		return err
	}
	check := func(s *store.Store) error {
		v, err := s.Open(benchScope, "large") // verifies the whole value
		if err != nil {
			return err
		}
		defer v.Close()
		if v.Entry.Size != benchLargeSize {
			return fmt.Errorf("large value of %d bytes, want %d", v.Entry.Size, benchLargeSize)
		}
		return nil
	}
	dir := benchKeepFixture(b, "large-100MiB", fmt.Sprintf("large=%d", benchLargeSize), build, check)
	openValue := func(b *testing.B, s *store.Store) {
		v, err := s.Open(benchScope, "large")
		if err != nil {
			b.Fatal(err)
		}
		if v.Entry.Size != benchLargeSize || v.File() == nil {
			b.Fatalf("large value: size %d, file %v", v.Entry.Size, v.File() != nil)
		}
		v.Close()
	}
	b.Run("first", func(b *testing.B) {
		b.SetBytes(benchLargeSize)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			b.StopTimer()
			s := benchOpenSettled(b, dir)
			b.StartTimer()
			openValue(b, s)
			b.StopTimer()
			benchClose(b, s)
			b.StartTimer()
		}
	})
	b.Run("cached", func(b *testing.B) {
		s := benchOpenSettled(b, dir)
		openValue(b, s)
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			openValue(b, s)
		}
	})
}
