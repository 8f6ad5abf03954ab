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
	"sync"
	"syscall"

	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// Where each workload's data lives in the store (and, under the same
// names, on the tmpfs).
const (
	hotScope   = "instructions"
	hotKey     = "instruction_bench"
	listScope  = "task"
	bigScope   = "artifacts"
	bigKeyA    = "artifact-a.bin" // first read after mount: blob in the host page cache
	bigKeyB    = "artifact-b.bin" // first read after mount: blob evicted, read from disk
	lruScope   = "project"
	writeScope = "scratch" // cleared before every run
)

// fixtureConfig gives every scope the benchmark uses room and no expiry,
// so a kept fixture never ages out and quotas never refuse a write.
const fixtureConfig = `scopes:
  instructions: {quota: 64MB, ttl: 0}
  project: {quota: 2GB, ttl: 0}
  task: {quota: 2GB, ttl: 0}
  artifacts: {quota: 2GB, ttl: 0}
  scratch: {quota: 4GB, ttl: 0}
`

const fixtureVersion = "iriskvfs-bench fuse fixture v1"

type fixtureMarker struct {
	Version   string
	Keys      int
	KeySize   int
	HotSize   int
	BigSize   int64
	LRUValues int
	LRUSize   int
}

// fixture is the store every repetition mounts.
type fixture struct {
	dir, storeDir, config string
	hot                   []byte
	blobA, blobB          string // the big values' blob files
	lruKeys               []string
}

func listKey(i int) string { return fmt.Sprintf("k%07d", i) }
func lruKey(i int) string  { return fmt.Sprintf("lru-%02d.bin", i) }

// keyValue is the value of listed key i: keySize bytes, distinct per key.
func keyValue(i, size int) []byte {
	line := fmt.Sprintf("value of listed key %s: some agent note, line padding ...\n", listKey(i))
	return bytes.Repeat([]byte(line), size/len(line)+1)[:size]
}

// hotValue is the hot instruction file: markdown-like text.
func hotValue(size int) []byte {
	var b bytes.Buffer
	b.WriteString("# Benchmark instruction set\n\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "%d. When presenting results, state the measurement, the machine and the method; "+
			"compare side by side in one run and give ratios pair by pair.\n", i+1)
	}
	return b.Bytes()[:size]
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
// whether it built it.
func prepareFixture(dir string, sz sizes, fresh bool) (*fixture, bool, error) {
	marker := fixtureMarker{fixtureVersion, sz.keys, sz.keySize, sz.hotSize, sz.bigSize, sz.lruValues, sz.lruSize}
	fdir := filepath.Join(dir, fmt.Sprintf("fixture-%d", sz.keys))
	fx := &fixture{dir: fdir, storeDir: filepath.Join(fdir, "store"), config: filepath.Join(fdir, "config.yaml"), hot: hotValue(sz.hotSize)}
	for i := 0; i < sz.lruValues; i++ {
		fx.lruKeys = append(fx.lruKeys, lruKey(i))
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
		fmt.Printf("building the store fixture in %s (%d keys, 2 x %d MB, %d x %d KB) ...\n",
			fdir, sz.keys, sz.bigSize>>20, sz.lruValues, sz.lruSize/1000)
		if err := buildFixture(fx, policy, sz); err != nil {
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
	st, err := s.Stats()
	if err != nil {
		return nil, false, err
	}
	counts := map[string]int64{}
	for _, sc := range st.Scopes {
		counts[sc.Name] = sc.Keys
	}
	if counts[listScope] != int64(sz.keys) || counts[bigScope] != 2 || counts[hotScope] != 1 || counts[lruScope] != int64(sz.lruValues) {
		return nil, false, fmt.Errorf("fixture %s holds %v keys per scope, not what it should: run with -fresh", fdir, counts)
	}
	if _, err := s.Clear(writeScope); err != nil {
		return nil, false, err
	}
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
	v, _, err := s.Get(hotScope, hotKey)
	if err != nil {
		return nil, false, err
	}
	if !bytes.Equal(v, fx.hot) {
		return nil, false, errors.New("fixture's hot value differs from this program's: run with -fresh")
	}
	return fx, built, nil
}

func buildFixture(fx *fixture, policy *quota.Policy, sz sizes) error {
	s, err := store.Open(fx.storeDir, store.Options{Policy: policy})
	if err != nil {
		return err
	}
	defer s.Close()
	// Durable puts from many goroutines: their index commits are grouped.
	const workers = 64
	next := make(chan int)
	errs := make(chan error, workers)
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				if _, err := s.Put(listScope, listKey(i), bytes.NewReader(keyValue(i, sz.keySize)), store.PutOptions{}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	var putErr error
feed:
	for i := 0; i < sz.keys; i++ {
		select {
		case next <- i:
		case putErr = <-errs:
			break feed
		}
	}
	close(next)
	wg.Wait()
	if putErr == nil {
		select {
		case putErr = <-errs:
		default:
		}
	}
	if putErr != nil {
		return putErr
	}
	if _, err := s.Put(hotScope, hotKey, bytes.NewReader(fx.hot), store.PutOptions{ContentType: "text/markdown"}); err != nil {
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
		if _, err := s.Put(lruScope, lruKey(i), bytes.NewReader(lruValue(i, sz.lruSize)), store.PutOptions{}); err != nil {
			return err
		}
	}
	return nil
}

// native is the tmpfs side: the same names and bytes as the store's.
type native struct {
	root    string // the tmpfs mount point
	hot     string
	bigA    string
	listDir string
}

// prepareTmpfs mounts a tmpfs at dir and writes the hot file, the big file
// and the listed directory into it.
func prepareTmpfs(dir string, sz sizes) (*native, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", syscall.MS_NOSUID|syscall.MS_NODEV, "size=4g,mode=0755"); err != nil {
		return nil, fmt.Errorf("mount -t tmpfs %s: %w", dir, err)
	}
	cleanup.add(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			fmt.Fprintf(os.Stderr, "umount %s: %v; detaching it\n", dir, err)
			_ = syscall.Unmount(dir, syscall.MNT_DETACH)
		}
		_ = os.Remove(dir)
	})
	n := &native{
		root:    dir,
		hot:     filepath.Join(dir, hotScope, hotKey),
		bigA:    filepath.Join(dir, bigScope, bigKeyA),
		listDir: filepath.Join(dir, listScope),
	}
	for _, d := range []string{hotScope, bigScope, listScope} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(n.hot, hotValue(sz.hotSize), 0o644); err != nil {
		return nil, err
	}
	// The big file in one write, as a value arrives (§3.1 of the research:
	// a tmpfs file made by cp reads at half the speed).
	big, err := io.ReadAll(bigReader(0xa, sz.bigSize))
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(n.bigA, big, 0o644); err != nil {
		return nil, err
	}
	for i := 0; i < sz.keys; i++ {
		if err := os.WriteFile(filepath.Join(n.listDir, listKey(i)), keyValue(i, sz.keySize), 0o644); err != nil {
			return nil, err
		}
	}
	return n, nil
}
