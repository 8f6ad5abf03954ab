package main

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"
)

// mixSeed makes the mixed trace the same in every run and for every target.
const mixSeed = 20261126

type mixKind byte

const (
	mixRead mixKind = iota
	mixWrite
	mixDelete
)

// mixOp is one operation of a client's trace.
type mixOp struct {
	kind mixKind
	rel  string // read: the file's relative path; write, delete: the artifact's name
	size int    // write: the value's size
}

// mixTrace is the mixed agent workload, one list of operations per
// client: 80 % reads of whole instruction or project files (half each;
// instructions Zipf-skewed, as a few are hot, project files uniform), 15 %
// writes of new artifacts of 1 KB to mixMaxWrite (log-uniform: mostly
// small, some large), 5 % deletes of the client's oldest artifact still
// there (a read when it has none).
func mixTrace(sz sizes) [][]mixOp {
	trace := make([][]mixOp, sz.mixClients)
	for c := range trace {
		rng := rand.New(rand.NewPCG(mixSeed, uint64(c)))
		zipf := rand.NewZipf(rng, 1.2, 1, uint64(sz.mixInstr-1))
		var live []string
		for n := 0; len(trace[c]) < sz.mixOps; {
			p := rng.Float64()
			switch {
			case p >= 0.80 && p < 0.95:
				size := int(math.Round(1000 * math.Exp(rng.Float64()*math.Log(float64(sz.mixMaxWrite)/1000))))
				name := fmt.Sprintf("mix-c%d-%04d", c, n)
				n++
				live = append(live, name)
				trace[c] = append(trace[c], mixOp{kind: mixWrite, rel: name, size: size})
			case p >= 0.95 && len(live) > 0:
				trace[c] = append(trace[c], mixOp{kind: mixDelete, rel: live[0]})
				live = live[1:]
			default:
				var rel string
				if rng.IntN(2) == 0 {
					rel = hotScope + "/" + mixInstrKey(int(zipf.Uint64()))
				} else {
					rel = lruScope + "/" + mixProjKey(rng.IntN(sz.mixProj))
				}
				trace[c] = append(trace[c], mixOp{kind: mixRead, rel: rel})
			}
		}
	}
	return trace
}

// mixed runs workload 6 on every target in turn.
func (b *bench) mixed(r int) error {
	sz := b.o.sz
	trace := mixTrace(sz)
	if b.res.mixOps == nil {
		b.res.mixOps = map[string]int{}
		for _, ops := range trace {
			for _, op := range ops {
				b.res.mixOps[[]string{"read", "write", "delete"}[op.kind]]++
			}
		}
	}
	for _, t := range b.pick(readTargets...) {
		b.quiet()
		if err := b.try(t, "mixed workload", func() error {
			if !t.iris {
				for _, d := range []string{t.mixDir, t.tmpDir} {
					if err := os.MkdirAll(d, 0o755); err != nil {
						return err
					}
				}
			}
			// The values, outside the timing; distinct for every write.
			vals := make([][][]byte, len(trace))
			for c, ops := range trace {
				vals[c] = make([][]byte, len(ops))
				for i, op := range ops {
					if op.kind == mixWrite {
						vals[c][i] = b.value(make([]byte, op.size), t.name+"/mix", r, c<<20|i)
					}
				}
			}
			lat, wall, err := runMix(t, trace, vals)
			if err != nil {
				return err
			}
			var all []float64
			byKind := map[mixKind][]float64{}
			for c, ops := range trace {
				for i, op := range ops {
					v := ms(lat[c][i])
					all = append(all, v)
					byKind[op.kind] = append(byKind[op.kind], v)
				}
			}
			b.res.set("mix.tput", t.name, r, float64(len(all))/wall.Seconds())
			b.res.set("mix.p50", t.name, r, percentile(all, 50))
			b.res.set("mix.p99", t.name, r, percentile(all, 99))
			b.res.set("mix.read.p50", t.name, r, percentile(byKind[mixRead], 50))
			b.res.set("mix.write.p50", t.name, r, percentile(byKind[mixWrite], 50))
			b.res.set("mix.write.p99", t.name, r, percentile(byKind[mixWrite], 99))
			return nil
		}); err != nil {
			return err
		}
	}
	return nil
}

// runMix runs the clients' traces at once against t and returns each
// operation's latency and the wall time of the whole.
func runMix(t *target, trace [][]mixOp, vals [][][]byte) ([][]time.Duration, time.Duration, error) {
	lat := make([][]time.Duration, len(trace))
	errs := make([]error, len(trace))
	start := make(chan struct{})
	var wg sync.WaitGroup
	for c := range trace {
		wg.Add(1)
		go func(c int) {
			defer wg.Done()
			buf := make([]byte, 128<<10)
			lat[c] = make([]time.Duration, 0, len(trace[c]))
			<-start
			for i, op := range trace[c] {
				t0 := time.Now()
				var err error
				switch op.kind {
				case mixRead:
					_, err = openReadClose(t.path(op.rel), 1, buf)
				case mixWrite:
					if t.iris {
						err = createWrite(filepath.Join(t.mixDir, op.rel), vals[c][i])
					} else {
						err = nativeDurable(t.tmpDir, t.mixDir, op.rel, vals[c][i], false)
					}
				case mixDelete:
					if err = syscall.Unlink(filepath.Join(t.mixDir, op.rel)); err != nil {
						err = &os.PathError{Op: "unlink", Path: filepath.Join(t.mixDir, op.rel), Err: err}
					}
				}
				lat[c] = append(lat[c], time.Since(t0))
				if err != nil {
					errs[c] = fmt.Errorf("client %d, operation %d: %w", c, i, err)
					return
				}
			}
		}(c)
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	wall := time.Since(t0)
	for _, err := range errs {
		if err != nil {
			return nil, 0, err
		}
	}
	return lat, wall, nil
}

// percentile is the p-th percentile (nearest rank) of v.
func percentile(v []float64, p float64) float64 {
	if len(v) == 0 {
		return math.NaN()
	}
	s := slices.Clone(v)
	slices.Sort(s)
	k := int(math.Ceil(p/100*float64(len(s)))) - 1
	return s[min(max(k, 0), len(s)-1)]
}
