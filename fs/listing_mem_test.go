package fs

import (
	"crypto/sha256"
	"fmt"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// TestListingMemoryPerName pins what a name costs once the kernel knows it:
// a getdents+lstat listing of a scope (what `ls -l` does) makes the kernel
// hold every name, and the daemon a key file and go-fuse's inode entries
// for each. The test process is both the daemon and the client, so the
// figures include the client's path strings (~300 bytes, 3 allocations per
// name). Measured for 20,000 names: 540-590 bytes kept per name (256 of
// key file, most of the rest go-fuse's tables), 1,360-1,520 allocated in
// 16.5 allocations; before the key files were packed and the listing
// stopped decoding whole entries (and sizing _index.json from a list of
// them), 690 kept and 2,360-2,420 allocated in 22.4. The bounds leave room
// for the steps of map growth, not for a return of what was taken out.
func TestListingMemoryPerName(t *testing.T) {
	requireFUSE(t)
	const n = 20000
	dir := t.TempDir()
	// The entries only: a listing and lstat never open a value.
	db, err := index.Open(filepath.Join(dir, "index.db"), []string{"task"})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	if err := db.Update(func(tx *index.Tx) error {
		for i := 0; i < n; i++ {
			key := fmt.Sprintf("key-%06d", i)
			e := index.Entry{
				Scope: "task", Key: key, ContentType: "application/octet-stream", Size: 1024,
				Fingerprint: sha256.Sum256([]byte(key)), CreatedAt: now, ModTime: now,
				ExpiresAt: now.Add(24 * time.Hour), TTL: 24 * time.Hour, Mode: 0o644,
			}
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	tm := mountStore(t, mountOptions{storeDir: dir})
	time.Sleep(200 * time.Millisecond) // the store's startup sweep
	listed := func() int {
		t.Helper()
		fd, err := syscall.Open(tm.path("task"), syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		buf := make([]byte, 32<<10)
		names := make([]string, 0, n+1)
		for {
			k, err := syscall.Getdents(fd, buf)
			if err != nil {
				t.Fatal(err)
			}
			if k <= 0 {
				break
			}
			_, _, names = syscall.ParseDirent(buf[:k], -1, names)
		}
		var st syscall.Stat_t
		for _, name := range names {
			if err := syscall.Lstat(tm.path("task", name), &st); err != nil {
				t.Fatal(err)
			}
		}
		return len(names)
	}
	measure := func() runtime.MemStats {
		runtime.GC()
		runtime.GC() // and the sync.Pools' victims
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms
	}
	before := measure()
	if got := listed(); got != n+1 { // the keys and _index.json
		t.Fatalf("listed %d names, want %d", got, n+1)
	}
	after := measure()
	kept := (int64(after.HeapAlloc) - int64(before.HeapAlloc)) / n
	allocated := int64(after.TotalAlloc-before.TotalAlloc) / n
	allocs := float64(after.Mallocs-before.Mallocs) / n
	t.Logf("per listed name: %d bytes kept, %d bytes allocated, %.1f allocations", kept, allocated, allocs)
	if kept > 640 {
		t.Errorf("the daemon keeps %d bytes per name the kernel knows, over 640", kept)
	}
	if allocated > 1900 && !raceEnabled || allocs > 19.5 {
		t.Errorf("a listing allocates %d bytes in %.1f allocations per name, over 1900 bytes or 19.5", allocated, allocs)
	}
}
