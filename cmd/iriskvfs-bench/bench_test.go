package main

import (
	"bytes"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the test binary serve as the loopback helper, as the
// benchmark's own binary does.
func TestMain(m *testing.M) {
	if os.Getenv(roleEnv) == "loopback" {
		os.Exit(loopbackMain(os.Args[1:]))
	}
	os.Exit(m.Run())
}

func TestSummarizeSkipsMissing(t *testing.T) {
	nan := math.NaN()
	s, ok := summarize([]float64{3, nan, 1, 2})
	if !ok || s.med != 2 || s.lo != 1 || s.hi != 3 {
		t.Errorf("summarize = %+v, %v; want median 2 of 1..3", s, ok)
	}
	if _, ok := summarize([]float64{nan, nan}); ok {
		t.Error("summarize of no figures reported one")
	}
	s, _ = summarize([]float64{4, 1, 3, 2})
	if s.med != 2.5 {
		t.Errorf("median of 4 figures = %v, want 2.5", s.med)
	}
}

// Ratios pair repetition i with repetition i, and skip a repetition that
// either side lacks.
func TestRatiosPairByPair(t *testing.T) {
	nan := math.NaN()
	got := ratios([]float64{10, 20, 30, 40}, []float64{20, nan, 30, 10})
	want := []float64{2, 1, 0.25}
	if len(got) != len(want) {
		t.Fatalf("ratios = %v, want %v", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("ratios = %v, want %v", got, want)
		}
	}
}

func TestPercentile(t *testing.T) {
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(100 - i)
	}
	if p := percentile(v, 50); p != 50 {
		t.Errorf("p50 = %v, want 50", p)
	}
	if p := percentile(v, 99); p != 99 {
		t.Errorf("p99 = %v, want 99", p)
	}
	if p := percentile([]float64{7}, 99); p != 7 {
		t.Errorf("p99 of one = %v", p)
	}
}

// The mixed trace is the same every time, has about the mix it claims,
// and deletes only what its client wrote before.
func TestMixTrace(t *testing.T) {
	sz := fullSizes
	a, b := mixTrace(sz), mixTrace(sz)
	counts := map[mixKind]int{}
	for c := range a {
		if len(a[c]) != sz.mixOps {
			t.Fatalf("client %d has %d operations, want %d", c, len(a[c]), sz.mixOps)
		}
		live := map[string]bool{}
		for i, op := range a[c] {
			if op != b[c][i] {
				t.Fatalf("the trace differs between two calls at client %d op %d", c, i)
			}
			counts[op.kind]++
			switch op.kind {
			case mixWrite:
				if op.size < 1000 || op.size > sz.mixMaxWrite {
					t.Errorf("write of %d bytes", op.size)
				}
				live[op.rel] = true
			case mixDelete:
				if !live[op.rel] {
					t.Errorf("client %d deletes %s, which it has not written", c, op.rel)
				}
				delete(live, op.rel)
			}
		}
	}
	n := float64(sz.mixClients * sz.mixOps)
	for kind, want := range map[mixKind]float64{mixRead: 0.80, mixWrite: 0.15, mixDelete: 0.05} {
		if got := float64(counts[kind]) / n; math.Abs(got-want) > 0.03 {
			t.Errorf("kind %d is %.3f of the trace, want about %.2f", kind, got, want)
		}
	}
}

func TestCountRequests(t *testing.T) {
	log := `2026/11/26 00:00:00 rx 12: LOOKUP n1 ["instructions"] 13b
2026/11/26 00:00:00 tx 12:     OK, {n2 g1 tE=1h0m0s tA=1h0m0s {M040755 SZ=4096 L=1 0:0 B0*4096 i0:2 A 0.000000 M 0.000000 C 0.000000}}
2026/11/26 00:00:00 rx 14: OPEN n3 {O_RDONLY,0x8000}
2026/11/26 00:00:00 tx 14:     OK, {Fh 1 PASSTHROUGH}
2026/11/26 00:00:00 rx 16: READ n3 {Fh 1 [0 +131072)  L 0 RDONLY,0x8000}
2026/11/26 00:00:00 rx 18: READ n3 {Fh 1 [131072 +65536)  L 0 RDONLY,0x8000}
`
	c := countRequests(log)
	if c.total != 4 || c.counts["READ"] != 2 || c.passthrough != 1 || c.readAvg != 98304 {
		t.Errorf("countRequests = %+v", c)
	}
	if s := c.String(); !strings.HasPrefix(s, "4: READ×2 (96 KiB each)") {
		t.Errorf("String = %q", s)
	}
}

// TestSmoke runs the whole benchmark with tiny sizes, one repetition, and
// checks the report and that nothing stays mounted. It needs root and
// /dev/fuse (and builds cmd/iriskvfs).
func TestSmoke(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		t.Skip("needs /dev/fuse")
	}
	if testing.Short() {
		t.Skip("-short")
	}
	cleanup = cleanups{}
	defer cleanup.run()
	dir := t.TempDir()
	var out bytes.Buffer
	o := &options{reps: 1, dir: dir, rt: true, peers: true, out: &out, keepCaches: true, sz: sizes{
		keys: 300, keySize: 1 << 10, hotSize: 20 << 10, hotWarm: 20, hotIters: 200,
		cats: 3, cold: 2, bigSize: 2 << 20, writes: 50, writeSize: 4 << 10,
		lruValues: 2, lruSize: 100_000,
		mixInstr: 4, mixProj: 10, mixClients: 8, mixOps: 20, mixMaxWrite: 200_000,
	}}
	err := run(o)
	cleanup.run()
	if err != nil {
		t.Fatal(err)
	}
	report := out.String()
	for _, want := range []string{"| 1a |", "| 7e |", "| 1a | µs | iriskvfs-ro |", "| 4b | µs | iriskvfs |", "| 6a | ops/s | loopback |", "FUSE requests per operation"} {
		if !strings.Contains(report, want) {
			t.Errorf("the report lacks %q:\n%s", want, report)
		}
	}
	for _, p := range []string{tGocrypt, tRclone} {
		_, err := exec.LookPath(p)
		switch has := strings.Contains(report, "| 1a | µs | "+p+" |"); {
		case err == nil && !has:
			t.Errorf("%s is installed but has no figures:\n%s", p, report)
		case err != nil && !strings.Contains(report, p+": skipped (not installed)"):
			t.Errorf("%s is not installed and not reported as skipped:\n%s", p, report)
		}
	}
	if strings.Contains(report, "failed**") {
		t.Errorf("a target failed:\n%s", report)
	}
	for _, mi := range mounts() {
		if strings.HasPrefix(mi[0], dir) {
			t.Errorf("left mounted: %s (%s)", mi[0], mi[1])
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "mnt")); err != nil {
		t.Errorf("no mount points made: %v", err)
	}
}
