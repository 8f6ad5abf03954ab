package store_test

import (
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// TestWatchSeesEveryChange: the mount invalidates the kernel's caches from
// these calls, so every way a key can change must produce one.
func TestWatchSeesEveryChange(t *testing.T) {
	s, clock := utOpen(t, store.Options{})
	var mu sync.Mutex
	var got []string
	cancel := s.Watch(func(scope, key string) {
		mu.Lock()
		got = append(got, scope+"/"+key)
		mu.Unlock()
	})
	take := func() []string {
		mu.Lock()
		defer mu.Unlock()
		out := got
		got = nil
		slices.Sort(out)
		return out
	}
	expect := func(what string, want ...string) {
		t.Helper()
		slices.Sort(want)
		if g := take(); !slices.Equal(g, want) {
			t.Errorf("%s: watch saw %v, want %v", what, g, want)
		}
	}

	utPut(t, s, "task", "a", "1", store.PutOptions{})
	expect("put", "task/a")
	if _, err := s.UpdateMeta("task", "a", func(e *index.Entry) error { e.Mode = 0o600; return nil }); err != nil {
		t.Fatal(err)
	}
	expect("setattr", "task/a")
	if err := s.Rename("task", "a", "b"); err != nil {
		t.Fatal(err)
	}
	expect("rename", "task/a", "task/b")
	if err := s.Delete("task", "b"); err != nil {
		t.Fatal(err)
	}
	expect("rm", "task/b")
	if _, err := s.Put("task", "failing", strings.NewReader("x"), store.PutOptions{ContentType: "\x01"}); err == nil {
		t.Fatal("bad content type accepted")
	}
	expect("refused put")

	utPut(t, s, "task", "short", "x", store.PutOptions{TTL: time.Minute})
	utPut(t, s, "project", "p", "y", store.PutOptions{})
	take()
	clock.Add(2 * time.Minute)
	if _, err := s.PruneExpired(); err != nil {
		t.Fatal(err)
	}
	expect("prune", "task/short")
	if _, err := s.Clear("project"); err != nil {
		t.Fatal(err)
	}
	expect("clear", "project/p")

	cancel()
	utPut(t, s, "task", "after", "z", store.PutOptions{})
	expect("after cancel")
}

// TestInheritKeepsOnlyWhatWasChosen: a rewrite through the mount keeps a
// content type or TTL someone set, but re-guesses a guessed type (an empty
// file published by a shell before its first write must not pin its type).
func TestInheritKeepsOnlyWhatWasChosen(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "guessed", "", store.PutOptions{})
	e := utPut(t, s, "task", "guessed", "hello text\n", store.PutOptions{Inherit: true})
	if !strings.HasPrefix(e.ContentType, "text/plain") {
		t.Errorf("guessed type was pinned: %q", e.ContentType)
	}
	if e.TTL != 24*time.Hour || e.Flags&index.FlagTTLSet != 0 {
		t.Errorf("scope TTL: got %v flags %#x", e.TTL, e.Flags)
	}

	utPut(t, s, "task", "chosen", "x", store.PutOptions{ContentType: "application/x-mine", TTL: time.Hour})
	e = utPut(t, s, "task", "chosen", "hello text\n", store.PutOptions{Inherit: true})
	if e.ContentType != "application/x-mine" || e.TTL != time.Hour {
		t.Errorf("chosen type/TTL not inherited: %q %v", e.ContentType, e.TTL)
	}
	e = utPut(t, s, "task", "chosen", "plain put", store.PutOptions{})
	if e.ContentType == "application/x-mine" || e.TTL != 24*time.Hour {
		t.Errorf("a plain put kept the old metadata: %q %v", e.ContentType, e.TTL)
	}

	utPut(t, s, "task", "xattr", "", store.PutOptions{})
	if _, err := s.UpdateMeta("task", "xattr", func(e *index.Entry) error { e.ContentType = "text/csv"; return nil }); err != nil {
		t.Fatal(err)
	}
	e = utPut(t, s, "task", "xattr", "a,b\n", store.PutOptions{Inherit: true})
	if e.ContentType != "text/csv" {
		t.Errorf("type set by UpdateMeta not inherited: %q", e.ContentType)
	}
}
