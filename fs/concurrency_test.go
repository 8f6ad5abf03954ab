package fs

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// A self-describing value: magic, total length, writer, sequence, then a
// body whose every byte is derived from (writer, seq, offset). A value that
// is cut short, extended, or mixes two writes fails checkValue.
const valueMagic = "IRISVAL1"

func makeValue(writer, seq, size int) []byte {
	const hdr = 8 + 8 + 8 + 8
	if size < hdr {
		size = hdr
	}
	b := make([]byte, size)
	copy(b, valueMagic)
	binary.BigEndian.PutUint64(b[8:], uint64(size))
	binary.BigEndian.PutUint64(b[16:], uint64(writer))
	binary.BigEndian.PutUint64(b[24:], uint64(seq))
	for i := hdr; i < size; i++ {
		b[i] = bodyByte(writer, seq, i)
	}
	return b
}

func bodyByte(writer, seq, i int) byte { return byte(writer*31 + seq*7 + i*13 + i>>8) }

// checkValue returns the writer and seq of a complete value, or an error.
func checkValue(b []byte) (writer, seq int, err error) {
	const hdr = 32
	if len(b) < hdr || string(b[:8]) != valueMagic {
		return 0, 0, fmt.Errorf("no header (%d bytes: %q)", len(b), trim(b))
	}
	size := int(binary.BigEndian.Uint64(b[8:]))
	writer = int(binary.BigEndian.Uint64(b[16:]))
	seq = int(binary.BigEndian.Uint64(b[24:]))
	if size != len(b) {
		return writer, seq, fmt.Errorf("value %d/%d says %d bytes, read %d", writer, seq, size, len(b))
	}
	for i := hdr; i < size; i++ {
		if b[i] != bodyByte(writer, seq, i) {
			return writer, seq, fmt.Errorf("value %d/%d torn at byte %d of %d", writer, seq, i, size)
		}
	}
	return writer, seq, nil
}

// TestConcurrentReadWrite: many goroutines publish values to shared keys
// (each written under a private key, then renamed over the shared one) while
// others read the shared keys; every writer also rewrites its own key in
// place and reads it back. No reader ever sees a torn value, and every
// writer reads back its own last value after close.
//
// An open that races two replacements of the same key can fail with ESTALE
// (see TestNoESTALEUnderReplaceChurn); readers here retry it, and count it.
func TestConcurrentReadWrite(t *testing.T) {
	concurrentReadWrite(t, "rename", false)
}

// TestConcurrentInPlaceWriters: the same with writers rewriting the shared
// keys in place (O_TRUNC, and several writes) while readers read them.
func TestConcurrentInPlaceWriters(t *testing.T) {
	for _, mode := range []string{"trunc", "chunked", "mixed"} {
		t.Run(mode, func(t *testing.T) { concurrentReadWrite(t, mode, false) })
	}
}

// TestNoESTALEUnderReplaceChurn: an open of a key that is being replaced
// again and again never fails.
func TestNoESTALEUnderReplaceChurn(t *testing.T) {
	concurrentReadWrite(t, "rename", true)
}

func concurrentReadWrite(t *testing.T, mode string, failOnESTALE bool) {
	tm := mountStore(t, mountOptions{})
	const (
		writers  = 6
		readers  = 6
		shared   = 3
		rounds   = 30
		maxValue = 96 << 10
	)
	sharedKey := func(i int) string { return tm.path("task", fmt.Sprintf("shared-%d", i)) }

	var (
		stop      atomic.Bool
		reads     atomic.Int64
		stale     atomic.Int64
		torn      atomic.Int64
		wg, rwg   sync.WaitGroup
		errMu     sync.Mutex
		firstErrs []string
	)
	report := func(format string, args ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		if len(firstErrs) < 20 {
			firstErrs = append(firstErrs, fmt.Sprintf(format, args...))
		}
	}

	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(int64(w)))
			own := tm.path("task", fmt.Sprintf("own-%d", w))
			for seq := 1; seq <= rounds; seq++ {
				val := makeValue(w, seq, 32+rng.Intn(maxValue))
				var err error
				how := seq % 3
				switch mode {
				case "rename":
					how = 1
				case "trunc":
					how = 0
				case "chunked":
					how = 2
				}
				switch how {
				case 0: // whole value via O_TRUNC
					err = os.WriteFile(sharedKey(rng.Intn(shared)), val, 0o644)
				case 1: // a private key, then rename over a shared one
					tmp := tm.path("task", fmt.Sprintf("tmp-%d", w))
					if err = os.WriteFile(tmp, val, 0o644); err == nil {
						err = os.Rename(tmp, sharedKey(rng.Intn(shared)))
					}
				case 2: // in several writes
					var f *os.File
					if f, err = os.OpenFile(sharedKey(rng.Intn(shared)), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err == nil {
						for off := 0; off < len(val) && err == nil; off += 4096 {
							_, err = f.Write(val[off:min(off+4096, len(val))])
						}
						if cerr := f.Close(); err == nil {
							err = cerr
						}
					}
				}
				if err != nil {
					report("writer %d seq %d: %v", w, seq, err)
					continue
				}
				// Read-your-writes on a private key.
				if err := os.WriteFile(own, val, 0o644); err != nil {
					report("writer %d own: %v", w, err)
					continue
				}
				got, err := os.ReadFile(own)
				if err != nil {
					report("writer %d read own: %v", w, err)
				} else if !bytes.Equal(got, val) {
					gw, gs, cerr := checkValue(got)
					report("writer %d read own after close: got %d/%d (%v), want %d/%d", w, gw, gs, cerr, w, seq)
				}
			}
		}(w)
	}
	for r := 0; r < readers; r++ {
		rwg.Add(1)
		go func(r int) {
			defer rwg.Done()
			rng := rand.New(rand.NewSource(int64(100 + r)))
			for !stop.Load() {
				var p string
				if mode != "rename" && rng.Intn(4) == 0 {
					p = tm.path("task", fmt.Sprintf("own-%d", rng.Intn(writers)))
				} else {
					p = sharedKey(rng.Intn(shared))
				}
				b, err := os.ReadFile(p)
				if errors.Is(err, syscall.ENOENT) {
					continue // not written yet
				}
				if errors.Is(err, syscall.ESTALE) && !failOnESTALE {
					stale.Add(1)
					continue
				}
				if err != nil {
					report("reader %d %s: %v", r, p, err)
					continue
				}
				reads.Add(1)
				if _, _, err := checkValue(b); err != nil {
					torn.Add(1)
					report("reader %d %s: %v", r, p, err)
				}
				if rng.Intn(8) == 0 {
					if fi, err := os.Stat(p); err == nil && fi.Size() < 32 {
						report("reader %d %s: stat size %d", r, p, fi.Size())
					}
				}
			}
		}(r)
	}
	start := time.Now()
	wg.Wait()
	stop.Store(true)
	rwg.Wait()
	t.Logf("%s: %d writers x %d rounds, %d reads by %d readers in %v (%d opens failed with ESTALE)",
		mode, writers, rounds, reads.Load(), readers, time.Since(start).Round(time.Millisecond), stale.Load())
	for _, e := range firstErrs {
		t.Error(e)
	}
	if torn.Load() > 0 {
		t.Errorf("%d torn reads", torn.Load())
	}
	if reads.Load() == 0 {
		t.Errorf("no reads happened")
	}
	// Every shared key ends as one complete value, the same in the store.
	for i := 0; i < shared; i++ {
		b := readFile(t, sharedKey(i))
		if _, _, err := checkValue(b); err != nil {
			t.Errorf("shared-%d at the end: %v", i, err)
		}
		if s, err := tm.get("task", fmt.Sprintf("shared-%d", i)); err != nil || !bytes.Equal(s, b) {
			t.Errorf("shared-%d: the mount and the store disagree (%v)", i, err)
		}
	}
}
