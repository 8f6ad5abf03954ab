package fs

// Benchmarks of the read-only mount's no-open mode against tmpfs, the
// paths interleaved round by round so that load on the machine hits them
// alike. The filesystem is served by this same process.
//
//	go test -run '^$' -bench 'BenchmarkReadOnlyOpenReadClose' -benchtime 20000x ./fs
//	go test -run '^$' -bench 'BenchmarkReadOnlySeqRead100MB' -benchtime 7x ./fs
//
// (b.N counts open+read+close of each path in the first, rounds of four
// 100 MB reads in the second.)
//
// Metrics: µs per open+read+close (or MB/s) of each path, the median over
// the rounds, and the FUSE/tmpfs ratios.

import (
	"bytes"
	"io"
	"os"
	"sort"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// shmFile writes data to a new file on tmpfs (/dev/shm) and returns its
// path.
func shmFile(b *testing.B, data []byte) string {
	b.Helper()
	dir, err := os.MkdirTemp("/dev/shm", "iriskvfs-bench-")
	if err != nil {
		b.Skipf("no tmpfs at /dev/shm: %v", err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	p := dir + "/value"
	if err := os.WriteFile(p, data, 0o644); err != nil {
		b.Fatal(err)
	}
	return p
}

// BenchmarkReadOnlyOpenReadClose: open+read+close of a hot 20 KB file, in
// a loop: tmpfs, a read-only mount (no OPEN), a writable mount (OPEN and
// RELEASE every time).
func BenchmarkReadOnlyOpenReadClose(b *testing.B) {
	val := pattern(20<<10, 7)
	ro := readOnlyMount(b, mountOptions{})
	ro.put("instructions", "hot.md", val, store.PutOptions{})
	rw := mountStore(b, mountOptions{})
	rw.put("instructions", "hot.md", val, store.PutOptions{})
	paths := []struct{ name, path string }{
		{"tmpfs", shmFile(b, val)},
		{"ro", ro.path("instructions", "hot.md")},
		{"rw", rw.path("instructions", "hot.md")},
	}
	buf := make([]byte, 64<<10)
	once := func(p string) {
		n, err := openReadClose(p, buf)
		if err != nil || n != len(val) {
			b.Fatalf("%s: %d, %v", p, n, err)
		}
	}
	for _, p := range paths {
		once(p.path) // first touch
		once(p.path)
		if got := readFile(b, p.path); !bytes.Equal(got, val) {
			b.Fatalf("%s: wrong content", p.path)
		}
	}
	const perRound = 500
	rounds := max(b.N/perRound, 3)
	us := make(map[string][]float64)
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		for i := range paths {
			p := paths[(r+i)%len(paths)]
			start := time.Now()
			for j := 0; j < perRound; j++ {
				once(p.path)
			}
			us[p.name] = append(us[p.name], float64(time.Since(start).Microseconds())/perRound)
		}
	}
	b.StopTimer()
	t, r, w := median(us["tmpfs"]), median(us["ro"]), median(us["rw"])
	b.ReportMetric(t, "µs-tmpfs")
	b.ReportMetric(r, "µs-ro")
	b.ReportMetric(w, "µs-rw")
	b.ReportMetric(r/t, "ro/tmpfs")
	b.ReportMetric(w/t, "rw/tmpfs")
}

// BenchmarkReadOnlySeqRead100MB: a 100 MB value read start to end with a
// 1 MiB buffer: tmpfs; the value's blob file in the store (on whatever
// disk the store is, read natively); the read-only mount with the kernel's pages dropped
// first (every byte served by the daemon, from the verified blob file it
// keeps) and warm (from the kernel's page cache, which it keeps across
// opens); a writable mount, which opens the value and, as root, reads it
// through FUSE passthrough.
func BenchmarkReadOnlySeqRead100MB(b *testing.B) {
	requireFUSE(b)
	val := pattern(100<<20, 3)
	ro := readOnlyMount(b, mountOptions{})
	ro.put("artifacts", "big.bin", val, store.PutOptions{})
	rw := mountStore(b, mountOptions{})
	rw.put("artifacts", "big.bin", val, store.PutOptions{})
	shm := shmFile(b, val)
	roPath, rwPath := ro.path("artifacts", "big.bin"), rw.path("artifacts", "big.bin")
	e, err := rw.store.Lookup("artifacts", "big.bin")
	if err != nil {
		b.Fatal(err)
	}
	blob := rw.store.BlobPath(e.Fingerprint)
	buf := make([]byte, 1<<20)
	readAll := func(p string) float64 {
		f, err := os.Open(p)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		var n int64
		for {
			m, err := f.Read(buf)
			n += int64(m)
			if err == io.EOF || m == 0 {
				break
			}
			if err != nil {
				b.Fatalf("%s: %v", p, err)
			}
		}
		d := time.Since(start)
		if n != int64(len(val)) {
			b.Fatalf("%s: read %d bytes", p, n)
		}
		return float64(n) / d.Seconds() / 1e6
	}
	for _, p := range []string{shm, blob, roPath, rwPath} {
		readAll(p) // verified once, pages cached
	}
	mbs := map[string][]float64{}
	rounds := b.N
	b.ResetTimer()
	for r := 0; r < rounds; r++ {
		mbs["tmpfs"] = append(mbs["tmpfs"], readAll(shm))
		mbs["blob"] = append(mbs["blob"], readAll(blob))
		dropPages(b, roPath)
		mbs["ro-cold"] = append(mbs["ro-cold"], readAll(roPath))
		mbs["ro-warm"] = append(mbs["ro-warm"], readAll(roPath))
		mbs["rw-passthrough"] = append(mbs["rw-passthrough"], readAll(rwPath))
	}
	b.StopTimer()
	t := median(mbs["tmpfs"])
	b.ReportMetric(t, "MB/s-tmpfs")
	for _, k := range []string{"blob", "ro-cold", "ro-warm", "rw-passthrough"} {
		b.ReportMetric(median(mbs[k]), "MB/s-"+k)
		b.ReportMetric(median(mbs[k])/t, k+"/tmpfs")
	}
	b.ReportMetric(median(mbs["rw-passthrough"])/median(mbs["blob"]), "rw-passthrough/blob")
}
