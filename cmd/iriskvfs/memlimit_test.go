package main

import (
	"io"
	"log/slog"
	"math"
	"runtime"
	"runtime/debug"
	"testing"
	"time"
)

func TestParseMemoryLimit(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int64
		bad  bool
	}{
		{in: "96MiB", want: 96 << 20},
		{in: "256MB", want: 256 << 20},
		{in: "1.5GiB", want: 3 << 29},
		{in: "0", want: 0},
		{in: "off", want: 0},
		{in: "OFF", want: 0},
		{in: "64", bad: true}, // 64 bytes: a typo, not a limit
		{in: "8MiB", bad: true},
		{in: "lots", bad: true},
		{in: "-1GB", bad: true},
	} {
		got, err := parseMemoryLimit(c.in)
		if c.bad != (err != nil) || !c.bad && got != c.want {
			t.Errorf("parseMemoryLimit(%q) = %d, %v; want %d (bad: %v)", c.in, got, err, c.want, c.bad)
		}
	}
}

// TestLimitFor: the limit is the operator's while the live heap leaves a
// quarter of it to collect in, and follows the live heap past that, so the
// collector never runs back to back.
func TestLimitFor(t *testing.T) {
	const mb = 1 << 20
	for _, c := range []struct {
		base        int64
		live, other uint64
		want        int64
	}{
		{base: 96 * mb, live: 10 * mb, other: 8 * mb, want: 96 * mb},
		{base: 96 * mb, live: 70 * mb, other: 8 * mb, want: 96 * mb},     // 70+17.5+8 = 95.5
		{base: 96 * mb, live: 80 * mb, other: 8 * mb, want: 108 * mb},    // 80+20+8
		{base: 96 * mb, live: 800 * mb, other: 20 * mb, want: 1020 * mb}, // a huge scope
		{base: 16 * mb, live: math.MaxUint64 / 2, other: 0, want: math.MaxInt64},
	} {
		if got := limitFor(c.base, c.live, c.other); got != c.want {
			t.Errorf("limitFor(%d MiB, live %d MiB, other %d MiB) = %d MiB, want %d MiB",
				c.base/mb, c.live/mb, c.other/mb, got/mb, c.want/mb)
		}
		if got := limitFor(c.base, c.live, c.other); uint64(got) < c.live+c.live/4 && c.live < math.MaxUint64/4 {
			t.Errorf("limit %d leaves less than a quarter of live %d", got, c.live)
		}
	}
}

// TestMemoryLimitFollowsLiveHeap runs the governor in this process: with a
// small limit and more live data than it holds, the limit rises after a
// collection to leave room above the live heap, and comes back down once
// the data is gone; off means no limit.
func TestMemoryLimitFollowsLiveHeap(t *testing.T) {
	defer debug.SetMemoryLimit(debug.SetMemoryLimit(-1))
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	stop, err := startMemoryLimit("16MiB", true, log)
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	waitLimit := func(ok func(int64) bool) int64 {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			runtime.GC() // the governor runs after each collection
			l := debug.SetMemoryLimit(-1)
			if ok(l) || time.Now().After(deadline) {
				return l
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	live := make([][]byte, 64)
	for i := range live {
		live[i] = make([]byte, 1<<20)
		live[i][0] = 1
	}
	if l := waitLimit(func(l int64) bool { return l >= 80<<20 }); l < 80<<20 {
		t.Fatalf("with 64 MiB live the limit is %d MiB, want at least 80 (1.25x)", l>>20)
	}
	runtime.KeepAlive(live)
	live = nil
	if l := waitLimit(func(l int64) bool { return l < 48<<20 }); l >= 48<<20 {
		t.Errorf("with the data gone the limit stayed at %d MiB", l>>20)
	}
	stop()
	stop2, err := startMemoryLimit("off", true, log)
	if err != nil {
		t.Fatal(err)
	}
	defer stop2()
	if l := debug.SetMemoryLimit(-1); l != math.MaxInt64 {
		t.Errorf("--memory-limit off left a limit of %d", l)
	}
}
