package instructions

import (
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// Guard keeps the canonical sets present and intact in a store while a
// daemon serves it: a set that is deleted, cleared, expired, replaced or
// found corrupt is restored from the embedded copy, and each restoration is
// logged and counted. The mount also asks it (Heal) when a lookup or an
// open of a set fails, so an agent never sees its instructions missing.
type Guard struct {
	s        *store.Store
	log      *slog.Logger
	restored atomic.Int64
	poke     chan struct{}
	stop     chan struct{}
	done     chan struct{}
	unwatch  func()
	mu       sync.Mutex // serialises restorations
}

// CheckInterval is how often the guard looks at every set unprompted (an
// expiry changes nothing in the store, so no change event announces it).
const CheckInterval = 30 * time.Second

// StartGuard starts guarding the sets in s.
func StartGuard(s *store.Store, log *slog.Logger) *Guard {
	g := &Guard{s: s, log: log, poke: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	g.unwatch = s.Watch(func(scope, key string) {
		if IsCanonical(scope, key) {
			g.nudge()
		}
	})
	go g.loop()
	return g
}

func (g *Guard) nudge() {
	select {
	case g.poke <- struct{}{}:
	default:
	}
}

func (g *Guard) loop() {
	defer close(g.done)
	t := time.NewTicker(CheckInterval)
	defer t.Stop()
	for {
		select {
		case <-g.stop:
			return
		case <-g.poke:
		case <-t.C:
		}
		for _, set := range Canonical() {
			g.restore(set.Key)
		}
	}
}

// restore rewrites key if needed. It reports whether the set is present
// and intact afterwards, and whether this call wrote it.
func (g *Guard) restore(key string) (ok, wrote bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	a, err := Restore(g.s, key)
	if err != nil {
		g.log.Error("cannot restore instruction set", "key", key, "err", err)
		return false, false
	}
	if a.Did == "unchanged" {
		return true, false
	}
	g.restored.Add(1)
	g.log.Warn("restored instruction set", "key", key, "version", a.Version, "reason", a.Reason)
	return true, true
}

// Heal restores scope/key at once if it is a canonical set that needs it.
// It reports whether the set is present and intact now (restored by this
// call or another), so that the caller's retry will find it.
func (g *Guard) Heal(scope, key string) bool {
	if !IsCanonical(scope, key) {
		return false
	}
	ok, _ := g.restore(key)
	return ok
}

// Restored is how many restorations the guard made.
func (g *Guard) Restored() int64 { return g.restored.Load() }

// Stop stops the guard.
func (g *Guard) Stop() {
	g.unwatch()
	close(g.stop)
	<-g.done
}

// Telemetry is what the instruction sets' use looks like since the store
// was opened: the "instructions" object of .stats and stats --json.
type Telemetry struct {
	Reads     map[string]int64 `json:"reads"`      // opens per canonical set
	NeverRead []string         `json:"never_read"` // canonical sets nobody opened
	Restored  int64            `json:"restored"`   // restorations by the guard
}

// TelemetryOf derives the telemetry from store stats (Reads must track the
// instructions scope) and the guard (nil when none runs).
func TelemetryOf(st *store.Stats, g *Guard) Telemetry {
	t := Telemetry{Reads: map[string]int64{}, NeverRead: []string{}}
	for _, set := range Canonical() {
		n := st.Reads[Scope+"/"+set.Key]
		t.Reads[set.Key] = n
		if n == 0 {
			t.NeverRead = append(t.NeverRead, set.Key)
		}
	}
	if g != nil {
		t.Restored = g.Restored()
	}
	return t
}
