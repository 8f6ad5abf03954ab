package index

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestReleaseStaysInsideTheMapping: a release never reaches past bbolt's
// mapping, whatever the index's metadata claims. An index whose meta page
// claims more pages than the mapping holds (a damaged or cut file) once
// made a release zero the Go heap next to the map (TestFaultDamagedIndex
// crashed in the allocator).
func TestReleaseStaysInsideTheMapping(t *testing.T) {
	path := filepath.Join(t.TempDir(), "index.db")
	db, err := Open(path, []string{"task"})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx *Tx) error {
		for i := 0; i < 3000; i++ {
			e := Entry{Scope: "task", Key: fmt.Sprintf("k%05d", i), Size: 1, Mode: 0o644, CreatedAt: time.Now(), ModTime: time.Now()}
			if _, _, err := tx.Put(e); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	data := db.bolt.Info().Data
	mapped := mappingAt(data)
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if mapped < uintptr(fi.Size()) {
		t.Fatalf("mappingAt says %d bytes, the file has %d", mapped, fi.Size())
	}
	if got := db.mapped.length(data); got != mapped {
		t.Errorf("cached length %d, /proc/self/maps %d", got, mapped)
	}
	if n := mappingAt(0x1000); n != 0 {
		t.Errorf("mappingAt of an address nothing is mapped at: %d", n)
	}
	// A healthy index's transactions stay inside the mapping (the
	// clamp only matters for a damaged one).
	if err := db.bolt.View(func(tx *bolt.Tx) error {
		if uintptr(tx.Size()) > mapped {
			t.Fatalf("a healthy index's size %d exceeds its mapping %d", tx.Size(), mapped)
		}
		return db.release(tx)
	}); err != nil {
		t.Fatal(err)
	}
}
