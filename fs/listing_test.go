package fs

import (
	"fmt"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

// TestListingCachedUntilChange: the kernel keeps a scope's listing
// (FOPEN_CACHE_DIR), so a second ls reaches the daemon for nothing; every
// kind of change, through the mount or the store, shows in the next ls.
func TestListingCachedUntilChange(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	for i := 0; i < 50; i++ {
		tm.put("task", fmt.Sprintf("k%02d", i), []byte("v"), store.PutOptions{})
	}
	tm.m.Settle()
	want := storeNames(t, tm, "task")
	if got := listDir(t, tm.path("task")); !slices.Equal(got, want) {
		t.Fatalf("first ls: %d names, want %d", len(got), len(want))
	}
	before := tm.m.root.fs.direntsServed.Load()
	for i := 0; i < 3; i++ {
		if got := listDir(t, tm.path("task")); !slices.Equal(got, want) {
			t.Fatalf("cached ls: %d names, want %d", len(got), len(want))
		}
	}
	if n := tm.m.root.fs.direntsServed.Load() - before; n != 0 {
		t.Errorf("repeated ls of an unchanged scope served %d names from the daemon, want 0 (kernel cache)", n)
	}

	changes := []struct {
		what string
		do   func()
	}{
		{"put through the store", func() { tm.put("task", "new", []byte("n"), store.PutOptions{}) }},
		{"delete through the store", func() {
			if err := tm.store.Delete("task", "k07"); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename through the store", func() {
			if err := tm.store.Rename("task", "k08", "k08b"); err != nil {
				t.Fatal(err)
			}
		}},
		{"create through the mount", func() { writeFile(t, tm.path("task", "made"), []byte("m")) }},
		{"unlink through the mount", func() {
			if err := os.Remove(tm.path("task", "k09")); err != nil {
				t.Fatal(err)
			}
		}},
		{"rename through the mount", func() {
			if err := os.Rename(tm.path("task", "k10"), tm.path("task", "k10b")); err != nil {
				t.Fatal(err)
			}
		}},
	}
	for _, c := range changes {
		c.do()
		tm.m.Settle() // what the admin socket does before it answers
		want := storeNames(t, tm, "task")
		if got := listDir(t, tm.path("task")); !slices.Equal(got, want) {
			t.Errorf("ls after %s:\n got %q\nwant %q", c.what, diffNames(got, want), diffNames(want, got))
		}
	}
}

// TestListingExpiresOnTime: a cached listing never shows an entry after
// its expiry instant, even when nothing else changes.
func TestListingExpiresOnTime(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	tm.put("task", "stays", []byte("v"), store.PutOptions{})
	tm.put("task", "dies", []byte("v"), store.PutOptions{TTL: 2500 * time.Millisecond})
	e, err := tm.store.Lookup("task", "dies")
	if err != nil {
		t.Fatal(err)
	}
	tm.m.Settle()
	for i := 0; i < 2; i++ { // the second from the kernel's cache
		if got := listDir(t, tm.path("task")); !slices.Contains(got, "dies") {
			t.Fatalf("ls before expiry: %q", got)
		}
	}
	time.Sleep(time.Until(e.ExpiresAt))
	for time.Now().Before(e.ExpiresAt) {
		time.Sleep(time.Millisecond)
	}
	if got := listDir(t, tm.path("task")); slices.Contains(got, "dies") || !slices.Contains(got, "stays") {
		t.Errorf("ls at the expiry instant: %q", got)
	}
}

// TestListingRacesChanges: listings taken while the scope changes under
// them may show either state, but once the changes stop and settle, ls
// shows exactly what the store holds (a stale answer the kernel cached
// after an invalidation is invalidated again).
func TestListingRacesChanges(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	for round := 0; round < 5; round++ {
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for r := 0; r < 3; r++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					select {
					case <-stop:
						return
					default:
					}
					if _, err := os.ReadDir(tm.path("task")); err != nil {
						t.Error(err)
						return
					}
				}
			}()
		}
		for i := 0; i < 40; i++ {
			tm.put("task", fmt.Sprintf("r%d-%02d", round, i), []byte("v"), store.PutOptions{})
			if i%3 == 0 {
				_ = tm.store.Delete("task", fmt.Sprintf("r%d-%02d", round, i/2))
			}
		}
		close(stop)
		wg.Wait()
		tm.m.Settle()
		time.Sleep(2 * listingRaceDelay)
		tm.m.Settle()
		want := storeNames(t, tm, "task")
		if got := listDir(t, tm.path("task")); !slices.Equal(got, want) {
			t.Fatalf("round %d: ls after the changes settled:\n extra %q\nmissing %q", round, diffNames(got, want), diffNames(want, got))
		}
	}
}

// storeNames is what ls of scope must show: its live keys and _index.json.
func storeNames(t *testing.T, tm *testMount, scope string) []string {
	t.Helper()
	entries, err := tm.store.List(scope)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{indexName}
	for _, e := range entries {
		names = append(names, e.Key)
	}
	slices.Sort(names)
	return names
}

// diffNames returns the names in a that are not in b.
func diffNames(a, b []string) []string {
	var out []string
	for _, n := range a {
		if !slices.Contains(b, n) {
			out = append(out, n)
		}
	}
	return out
}
