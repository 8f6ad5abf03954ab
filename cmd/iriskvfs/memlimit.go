package main

import (
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/iriskvfs/iriskvfs/quota"
)

// defaultMemoryLimit is the mount daemon's memory limit unless the
// operator gives another (--memory-limit, IRISKVFS_MEMORY_LIMIT) or sets
// GOMEMLIMIT. Go's collector otherwise lets the heap grow to twice what is
// live: 100k names known to the kernel plus a full 32 MiB LRU are ~75 MB
// live, and ~160 MB of heap without a limit.
const defaultMemoryLimit = "96MiB"

// memoryLimitFlag is the flag (and its environment variable) that sets it.
const memoryLimitFlag = "memory-limit"

// parseMemoryLimit reads --memory-limit: a size (powers of 1024, as
// quotas), or "0"/"off" for none (Go's defaults, GOGC alone).
func parseMemoryLimit(s string) (int64, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "0", "off", "none":
		return 0, nil
	}
	n, err := quota.ParseSize(s)
	if err != nil {
		return 0, fmt.Errorf("--%s: %w", memoryLimitFlag, err)
	}
	if n < minMemoryLimit {
		return 0, fmt.Errorf("--%s: %s is below the minimum, %d MiB (0 or off: no limit)", memoryLimitFlag, s, minMemoryLimit>>20)
	}
	return n, nil
}

// minMemoryLimit keeps a typo (--memory-limit 64) from making the daemon
// collect after every request.
const minMemoryLimit = 16 << 20

// liveHeadroom is the least room the limit leaves above what the heap
// holds live after a collection, as a fraction of it (1/4): when the live
// data outgrows the limit, the limit follows it, so the collector never
// runs back to back (a death spiral); it then runs about as often as with
// GOGC=25, and the heap stays within 1.25x its live data.
const liveHeadroom = 4

// limitFor is the memory limit to apply when the heap holds live bytes
// of objects, and the runtime other bytes besides the heap (stacks, its
// own metadata): base, unless that leaves less than a quarter of live as
// room to collect in.
func limitFor(base int64, live, other uint64) int64 {
	need := other + live + live/liveHeadroom
	if need > math.MaxInt64 {
		return math.MaxInt64
	}
	return max(base, int64(need))
}

// memoryGovernor keeps debug.SetMemoryLimit at limitFor(base, ...) for
// the live heap after each collection.
type memoryGovernor struct {
	base    int64
	stopped atomic.Bool
	mu      sync.Mutex
	limit   int64
	samples []metrics.Sample
}

// startMemoryLimit applies the daemon's memory limit. setting is the
// --memory-limit value and explicit whether the operator gave it; without
// it, a GOMEMLIMIT in the environment wins (Go has applied it already).
// It returns a function that stops following the live heap.
func startMemoryLimit(setting string, explicit bool, log *slog.Logger) (stop func(), err error) {
	if !explicit && os.Getenv("GOMEMLIMIT") != "" {
		log.Info("memory limit from GOMEMLIMIT", "limit_bytes", debug.SetMemoryLimit(-1))
		return func() {}, nil
	}
	base, err := parseMemoryLimit(setting)
	if err != nil {
		return nil, err
	}
	if base == 0 {
		debug.SetMemoryLimit(math.MaxInt64)
		return func() {}, nil
	}
	g := &memoryGovernor{base: base, samples: []metrics.Sample{
		{Name: "/gc/heap/live:bytes"},
		{Name: "/memory/classes/total:bytes"},
		{Name: "/memory/classes/heap/objects:bytes"},
		{Name: "/memory/classes/heap/unused:bytes"},
		{Name: "/memory/classes/heap/free:bytes"},
		{Name: "/memory/classes/heap/released:bytes"},
	}}
	g.adjust()
	g.arm()
	log.Info("memory limit", "limit_bytes", base)
	return func() { g.stopped.Store(true) }, nil
}

// adjust sets the limit for the live heap the last collection found.
func (g *memoryGovernor) adjust() {
	g.mu.Lock()
	defer g.mu.Unlock()
	metrics.Read(g.samples)
	v := func(i int) uint64 {
		if g.samples[i].Value.Kind() != metrics.KindUint64 {
			return 0
		}
		return g.samples[i].Value.Uint64()
	}
	live, total := v(0), v(1)
	heap := v(2) + v(3) + v(4) + v(5)
	other := uint64(0)
	if total > heap {
		other = total - heap
	}
	if l := limitFor(g.base, live, other); l != g.limit {
		g.limit = l
		debug.SetMemoryLimit(l)
	}
}

// gcSentinel is an object whose finalizer runs once per collection: it is
// unreachable, so every cycle finds it and queues the finalizer, which
// re-arms it. It holds a pointer so that it is never a tiny allocation
// (those may never be finalized).
type gcSentinel struct{ _ *byte }

func (g *memoryGovernor) arm() {
	runtime.SetFinalizer(&gcSentinel{}, g.afterGC)
}

func (g *memoryGovernor) afterGC(s *gcSentinel) {
	if g.stopped.Load() {
		return
	}
	g.adjust()
	runtime.SetFinalizer(s, g.afterGC)
}
