package instructions_test

import (
	"bytes"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/store"
)

func waitCanonical(t *testing.T, s *store.Store, key string) {
	t.Helper()
	set, _ := instructions.Lookup(key)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if b, _, err := s.Get(instructions.Scope, key); err == nil && bytes.Equal(b, set.Content) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s was not restored", key)
}

func TestGuardRestoresDeletedClearedAndCorruptSets(t *testing.T) {
	var offset atomic.Int64 // the guard's goroutine reads the clock too
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	s, err := store.Open(t.TempDir(), store.Options{Now: clock, TrackReads: []string{instructions.Scope}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := instructions.Seed(s, false); err != nil {
		t.Fatal(err)
	}
	g := instructions.StartGuard(s, slog.New(slog.DiscardHandler))
	defer g.Stop()
	sets := instructions.Canonical()

	if err := s.Delete(instructions.Scope, sets[0].Key); err != nil {
		t.Fatal(err)
	}
	waitCanonical(t, s, sets[0].Key)

	if _, err := s.Clear(instructions.Scope); err != nil {
		t.Fatal(err)
	}
	for _, set := range sets {
		waitCanonical(t, s, set.Key)
	}
	if g.Restored() < 5 {
		t.Errorf("restored %d times, want at least 5 (1 delete + 4 cleared)", g.Restored())
	}

	// Corrupt on disk: no change event; Heal (what the mount calls when an
	// open fails) restores it at once.
	e, err := s.Lookup(instructions.Scope, sets[1].Key)
	if err != nil {
		t.Fatal(err)
	}
	corrupt(t, s, e)
	if !g.Heal(instructions.Scope, sets[1].Key) {
		t.Fatal("Heal did not restore a corrupt set")
	}
	if _, err := s.Verify(instructions.Scope, sets[1].Key); err != nil {
		t.Fatalf("still corrupt after Heal: %v", err)
	}

	// Expired: invisible, and no event either; Heal brings it back.
	offset.Store(int64(200 * time.Hour))
	if _, err := s.Lookup(instructions.Scope, sets[2].Key); err == nil {
		t.Fatal("set did not expire")
	}
	if !g.Heal(instructions.Scope, sets[2].Key) {
		t.Fatal("Heal did not restore an expired set")
	}
	waitCanonical(t, s, sets[2].Key)
	before, _ := s.Lookup(instructions.Scope, sets[2].Key)
	after, _ := s.Lookup(instructions.Scope, sets[2].Key)
	if !g.Heal(instructions.Scope, sets[2].Key) {
		t.Error("Heal of a set that is fine did not say it is present")
	}
	if after, _ = s.Lookup(instructions.Scope, sets[2].Key); !after.CreatedAt.Equal(before.CreatedAt) {
		t.Error("Heal rewrote a set that was fine")
	}
	if g.Heal("task", sets[2].Key) || g.Heal(instructions.Scope, "not_canonical") {
		t.Error("Heal acted on a key that is not a canonical set")
	}
}

func TestTelemetryCountsReadsNotSeeds(t *testing.T) {
	s, err := store.Open(t.TempDir(), store.Options{TrackReads: []string{instructions.Scope}})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if _, err := instructions.Seed(s, false); err != nil {
		t.Fatal(err)
	}
	if _, err := instructions.Seed(s, true); err != nil {
		t.Fatal(err)
	}
	sets := instructions.Canonical()
	for i := 0; i < 3; i++ {
		if _, _, err := s.Get(instructions.Scope, sets[3].Key); err != nil {
			t.Fatal(err)
		}
	}
	st, err := s.Stats()
	if err != nil {
		t.Fatal(err)
	}
	tel := instructions.TelemetryOf(&st, nil)
	if tel.Reads[sets[3].Key] != 3 || tel.Reads[sets[0].Key] != 0 {
		t.Errorf("reads %v, want 3 for %s and 0 for the rest (seeding is not reading)", tel.Reads, sets[3].Key)
	}
	if len(tel.NeverRead) != 3 {
		t.Errorf("never read %v, want the other three", tel.NeverRead)
	}
}
