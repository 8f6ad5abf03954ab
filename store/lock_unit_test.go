package store_test

import (
	"os"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

// TestLockHolder: unmount finds the daemon to stop through LockHolder.
func TestLockHolder(t *testing.T) {
	dir := t.TempDir()
	if _, held := store.LockHolder(dir); held {
		t.Fatal("an absent store reported as held")
	}
	s := utOpenAt(t, dir, store.Options{})
	pid, held := store.LockHolder(dir)
	if !held || pid != os.Getpid() {
		t.Fatalf("LockHolder = %d, %v; want %d, true", pid, held, os.Getpid())
	}
	// The probe must not make a concurrent open think the store is free
	// or held by someone else: ask many times, then close and reopen.
	for i := 0; i < 100; i++ {
		store.LockHolder(dir)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, held := store.LockHolder(dir); held {
		t.Fatal("a closed store reported as held")
	}
	s2 := utOpenAt(t, dir, store.Options{})
	s2.Close()
}
