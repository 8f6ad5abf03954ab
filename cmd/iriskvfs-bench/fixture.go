package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// Where each workload's data lives: in the store (scope/key), and under the
// same relative paths in the plain tree that tmpfs, loopback, rclone and
// gocryptfs serve.
const (
	hotScope   = "instructions"
	hotKey     = "instruction_bench"
	listScope  = "task"
	bigScope   = "artifacts"
	bigKeyA    = "artifact-a.bin" // first read after mount: blob in the host page cache
	bigKeyB    = "artifact-b.bin" // first read after mount: blob evicted, read from disk (iriskvfs only)
	lruScope   = "project"
	writeScope = "scratch" // iriskvfs: cleared before every run and after every repetition
	mixScope   = "artifacts"
)

func coldOrcKey(i int) string  { return fmt.Sprintf("cold-orc-%02d", i) }
func coldCatKey(i int) string  { return fmt.Sprintf("cold-cat-%02d", i) }
func mixInstrKey(i int) string { return fmt.Sprintf("mix-instruction-%02d", i) }
func mixProjKey(i int) string  { return fmt.Sprintf("mix-project-%03d", i) }

// Relative paths, the same on every target.
var (
	hotRel  = hotScope + "/" + hotKey
	bigRel  = bigScope + "/" + bigKeyA
	listRel = listScope
)

func coldOrcRel(i int) string { return hotScope + "/" + coldOrcKey(i) }
func coldCatRel(i int) string { return hotScope + "/" + coldCatKey(i) }

// fixtureConfig gives every scope the benchmark uses room and no expiry,
// so a kept fixture never ages out and quotas never refuse a write.
const fixtureConfig = `scopes:
  instructions: {quota: 64MB, ttl: 0}
  project: {quota: 2GB, ttl: 0}
  task: {quota: 2GB, ttl: 0}
  artifacts: {quota: 4GB, ttl: 0}
  scratch: {quota: 4GB, ttl: 0}
`

const fixtureVersion = "iriskvfs-bench fuse fixture v2"

type fixtureMarker struct {
	Version   string
	Keys      int
	KeySize   int
	HotSize   int
	BigSize   int64
	LRUValues int
	LRUSize   int
	Cold      int
	MixInstr  int
	MixProj   int
	ReadOnly  bool
}

// fixture is a store a repetition mounts.
type fixture struct {
	dir, storeDir, config string
	hot                   []byte
	blobA, blobB          string // the big values' blob files (not in the read-only fixture)
	index                 string // the store's index file
	lruKeys               []string
}

func listKey(i int) string { return fmt.Sprintf("k%07d", i) }
func lruKey(i int) string  { return fmt.Sprintf("lru-%02d.bin", i) }

// keyValue is the value of listed key i: keySize bytes, distinct per key.
func keyValue(i, size int) []byte {
	line := fmt.Sprintf("value of listed key %s: some agent note, line padding ...\n", listKey(i))
	return bytes.Repeat([]byte(line), size/len(line)+1)[:size]
}

// textValue is markdown-like text of size bytes, distinct per title.
func textValue(title string, size int) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# %s\n\n", title)
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%d. When presenting results, state the measurement, the machine and the method; "+
			"compare side by side in one run and give ratios pair by pair.\n", i+1)
	}
	return b.Bytes()[:size]
}

// hotValue is the hot instruction file.
func hotValue(size int) []byte { return textValue("Benchmark instruction set", size) }

func coldValue(key string, size int) []byte { return textValue("Cold instruction set "+key, size) }

// mixInstrSize and mixProjSize are the sizes of the mixed workload's
// files: instructions 5–50 KB, project files 1–100 KB, spread evenly.
func mixInstrSize(i, n int) int { return 5_000 + i*45_000/max(n-1, 1) }
func mixProjSize(i, n int) int  { return 1_000 + (i*7919)%n*99_000/max(n-1, 1) }

func mixInstrValue(i, n int) []byte {
	return textValue("Mixed-workload instruction "+mixInstrKey(i), mixInstrSize(i, n))
}
func mixProjValue(i, n int) []byte {
	return textValue("Project summary "+mixProjKey(i), mixProjSize(i, n))
}

// bigReader streams n pseudo-random bytes, the same for the same seed.
func bigReader(seed byte, n int64) io.Reader {
	var s [32]byte
	s[0] = seed
	return io.LimitReader(rand.NewChaCha8(s), n)
}

func lruValue(i, size int) []byte {
	b := make([]byte, size)
	var s [32]byte
	s[0], s[1] = 0xee, byte(i)
	_, _ = rand.NewChaCha8(s).Read(b)
	return b
}

func fixturePolicy() (*quota.Policy, error) { return quota.Parse([]byte(fixtureConfig)) }

// prepareFixture returns the store fixture in dir, building it unless a
// matching one is kept there, and empties the scratch scope. It reports
// whether it built it. The read-only fixture holds only the hot and cold
// instruction files: a store takes one daemon at a time, and the
// --read-only mount runs beside the read-write one.
func prepareFixture(dir string, sz sizes, fresh, readOnly bool) (*fixture, bool, error) {
	marker := fixtureMarker{fixtureVersion, sz.keys, sz.keySize, sz.hotSize, sz.bigSize, sz.lruValues, sz.lruSize,
		sz.cold, sz.mixInstr, sz.mixProj, readOnly}
	name := fmt.Sprintf("fixture-%d", sz.keys)
	if readOnly {
		marker = fixtureMarker{Version: fixtureVersion, HotSize: sz.hotSize, Cold: sz.cold, ReadOnly: true}
		name = fmt.Sprintf("fixture-ro-%d", sz.cold)
	}
	fdir := filepath.Join(dir, name)
	fx := &fixture{dir: fdir, storeDir: filepath.Join(fdir, "store"), config: filepath.Join(fdir, "config.yaml"), hot: hotValue(sz.hotSize)}
	if !readOnly {
		for i := 0; i < sz.lruValues; i++ {
			fx.lruKeys = append(fx.lruKeys, lruKey(i))
		}
	}
	policy, err := fixturePolicy()
	if err != nil {
		return nil, false, err
	}
	markerPath := filepath.Join(fdir, "fixture.json")
	want, _ := json.Marshal(marker)
	built := false
	if have, err := os.ReadFile(markerPath); fresh || err != nil || !bytes.Equal(have, want) {
		if err := os.RemoveAll(fdir); err != nil {
			return nil, false, err
		}
		if err := os.MkdirAll(fdir, 0o755); err != nil {
			return nil, false, err
		}
		if err := os.WriteFile(fx.config, []byte(fixtureConfig), 0o644); err != nil {
			return nil, false, err
		}
		if readOnly {
			fmt.Printf("building the read-only store fixture in %s ...\n", fdir)
		} else {
			fmt.Printf("building the store fixture in %s (%d keys, 2 x %d MB, %d x %d KB) ...\n",
				fdir, sz.keys, sz.bigSize>>20, sz.lruValues, sz.lruSize/1000)
		}
		if err := buildFixture(fx, policy, sz, readOnly); err != nil {
			return nil, false, err
		}
		if err := os.WriteFile(markerPath, want, 0o644); err != nil {
			return nil, false, err
		}
		built = true
	}
	if err := os.WriteFile(fx.config, []byte(fixtureConfig), 0o644); err != nil {
		return nil, false, err
	}
	// Offline: check it, empty the scratch scope, find the big blobs.
	s, err := store.Open(fx.storeDir, store.Options{Policy: policy})
	if err != nil {
		return nil, false, err
	}
	defer s.Close()
	fx.index = filepath.Join(fx.storeDir, "index.db")
	// What an interrupted run's mixed workload left.
	ents, err := s.List(mixScope)
	if err != nil {
		return nil, false, err
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Key, "mix-c") {
			if err := s.Delete(mixScope, e.Key); err != nil {
				return nil, false, err
			}
		}
	}
	st, err := s.Stats()
	if err != nil {
		return nil, false, err
	}
	counts := map[string]int64{}
	for _, sc := range st.Scopes {
		counts[sc.Name] = sc.Keys
	}
	wantHot := int64(1 + 2*sz.cold)
	if !readOnly {
		wantHot += int64(sz.mixInstr)
	}
	if counts[hotScope] != wantHot ||
		(!readOnly && (counts[listScope] != int64(sz.keys) || counts[bigScope] != 2 || counts[lruScope] != int64(sz.lruValues+sz.mixProj))) {
		return nil, false, fmt.Errorf("fixture %s holds %v keys per scope, not what it should: run with -fresh", fdir, counts)
	}
	if _, err := s.Clear(writeScope); err != nil {
		return nil, false, err
	}
	if !readOnly {
		for _, k := range []struct {
			key  string
			path *string
		}{{bigKeyA, &fx.blobA}, {bigKeyB, &fx.blobB}} {
			e, err := s.Lookup(bigScope, k.key)
			if err != nil {
				return nil, false, err
			}
			*k.path = s.BlobPath(e.Fingerprint)
		}
	}
	v, _, err := s.Get(hotScope, hotKey)
	if err != nil {
		return nil, false, err
	}
	if !bytes.Equal(v, fx.hot) {
		return nil, false, errors.New("fixture's hot value differs from this program's: run with -fresh")
	}
	return fx, built, nil
}

func buildFixture(fx *fixture, policy *quota.Policy, sz sizes, readOnly bool) error {
	s, err := store.Open(fx.storeDir, store.Options{Policy: policy})
	if err != nil {
		return err
	}
	defer s.Close()
	put := func(scope, key string, v []byte, ct string) error {
		_, err := s.Put(scope, key, bytes.NewReader(v), store.PutOptions{ContentType: ct})
		return err
	}
	if err := put(hotScope, hotKey, fx.hot, "text/markdown"); err != nil {
		return err
	}
	for i := 0; i < sz.cold; i++ {
		for _, k := range []string{coldOrcKey(i), coldCatKey(i)} {
			if err := put(hotScope, k, coldValue(k, sz.hotSize), "text/markdown"); err != nil {
				return err
			}
		}
	}
	if readOnly {
		return nil
	}
	// Durable puts from many goroutines: their index commits are grouped.
	if err := parallel(sz.keys, 64, func(i int) error {
		return put(listScope, listKey(i), keyValue(i, sz.keySize), "")
	}); err != nil {
		return err
	}
	for _, b := range []struct {
		key  string
		seed byte
	}{{bigKeyA, 0xa}, {bigKeyB, 0xb}} {
		if _, err := s.Put(bigScope, b.key, bigReader(b.seed, sz.bigSize), store.PutOptions{}); err != nil {
			return err
		}
	}
	for i := 0; i < sz.lruValues; i++ {
		if err := put(lruScope, lruKey(i), lruValue(i, sz.lruSize), ""); err != nil {
			return err
		}
	}
	for i := 0; i < sz.mixInstr; i++ {
		if err := put(hotScope, mixInstrKey(i), mixInstrValue(i, sz.mixInstr), "text/markdown"); err != nil {
			return err
		}
	}
	for i := 0; i < sz.mixProj; i++ {
		if err := put(lruScope, mixProjKey(i), mixProjValue(i, sz.mixProj), "text/markdown"); err != nil {
			return err
		}
	}
	return nil
}

// parallel runs fn(0..n-1) from workers goroutines and returns the first
// error.
func parallel(n, workers int, fn func(i int) error) error {
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := 0; i < n; i++ {
		select {
		case next <- i:
		case err = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// writeTree writes the plain tree every non-iriskvfs target serves into
// root: the same relative paths and bytes as the store fixture's (but for
// the evicted-blob artifact and the LRU filler, which only iriskvfs
// measures). Through a FUSE mount (gocryptfs) it writes from workers
// goroutines.
func writeTree(root string, sz sizes, workers int) error {
	for _, d := range []string{hotScope, bigScope, listScope, lruScope, writeScope} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	write := func(rel string, v []byte) error { return os.WriteFile(filepath.Join(root, rel), v, 0o644) }
	if err := write(hotRel, hotValue(sz.hotSize)); err != nil {
		return err
	}
	if err := writeColdFiles(root, sz); err != nil {
		return err
	}
	for i := 0; i < sz.mixInstr; i++ {
		if err := write(hotScope+"/"+mixInstrKey(i), mixInstrValue(i, sz.mixInstr)); err != nil {
			return err
		}
	}
	for i := 0; i < sz.mixProj; i++ {
		if err := write(lruScope+"/"+mixProjKey(i), mixProjValue(i, sz.mixProj)); err != nil {
			return err
		}
	}
	// The big file in one write, as a value arrives (§3.1 of the research:
	// a tmpfs file made by cp reads at half the speed).
	big, err := io.ReadAll(bigReader(0xa, sz.bigSize))
	if err != nil {
		return err
	}
	if err := write(bigRel, big); err != nil {
		return err
	}
	return parallel(sz.keys, workers, func(i int) error {
		return write(listRel+"/"+listKey(i), keyValue(i, sz.keySize))
	})
}

// writeColdFiles writes the cold-read files under root (the ext4
// reference has only these).
func writeColdFiles(root string, sz sizes) error {
	if err := os.MkdirAll(filepath.Join(root, hotScope), 0o755); err != nil {
		return err
	}
	for i := 0; i < sz.cold; i++ {
		if err := os.WriteFile(filepath.Join(root, coldOrcRel(i)), coldValue(coldOrcKey(i), sz.hotSize), 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(root, coldCatRel(i)), coldValue(coldCatKey(i), sz.hotSize), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// mountTmpfs mounts a tmpfs at dir; the cleanup unmounts it.
func mountTmpfs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=12g,mode=0755"); err != nil {
		return fmt.Errorf("mount -t tmpfs %s: %w", dir, err)
	}
	cleanup.add(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			fmt.Fprintf(os.Stderr, "umount %s: %v; detaching it\n", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		_ = os.Remove(dir)
	})
	return nil
}
