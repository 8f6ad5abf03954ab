package index

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"

	bolt "go.etcd.io/bbolt"
)

// ReleasePages gives back this process's mapping of the index file's pages
// (madvise MADV_DONTNEED), so that a scan of a large scope does not stay in
// the daemon's resident memory (RssFile) after it. The pages stay in the
// host's page cache; the next access maps them again (a minor fault).
//
// Why this is safe:
//   - bbolt maps the file read-only and shared (PROT_READ, MAP_SHARED) and
//     writes through the file descriptor, never through the map. Dropping
//     a page of a shared file mapping loses nothing: the next access reads
//     the file's current page from the page cache. (Only private or
//     anonymous mappings would come back zeroed or reverted.)
//   - The address range is bbolt's live mapping: it is taken inside a read
//     transaction, which holds bbolt's mmaplock for reading; bbolt unmaps
//     and remaps (when the file grows) only under that lock held for
//     writing, so the map cannot move or vanish under the madvise. Other
//     transactions reading meanwhile merely fault the pages in again.
//   - The length is the transaction's size (its high-water page times the
//     page size) clamped to the mapping's own length, read from
//     /proc/self/maps. A healthy index never has pages past its mapping,
//     but a damaged one can claim any high-water mark, and a madvise past
//     the mapping would zero whatever the Go heap keeps there.
func (db *DB) ReleasePages() error {
	return guard(db.path, func() error {
		return db.bolt.View(func(tx *bolt.Tx) error {
			return db.release(tx)
		})
	})
}

// release drops the pages of tx's view of the mapping. Callers hold a
// read transaction (bbolt cannot remap meanwhile).
func (db *DB) release(tx *bolt.Tx) error {
	data := db.bolt.Info().Data
	n := min(uintptr(tx.Size()), db.mapped.length(data))
	return madviseDontNeed(data, n)
}

// mappingLength caches the length of the mapping that starts at an
// address, from /proc/self/maps. bbolt only ever replaces its mapping by a
// larger one (it remaps to grow), so a cached length is never more than
// the current mapping's at the same address; a new address is looked up.
type mappingLength struct {
	mu   sync.Mutex
	addr uintptr
	n    uintptr
}

func (m *mappingLength) length(addr uintptr) uintptr {
	m.mu.Lock()
	defer m.mu.Unlock()
	if addr == m.addr && m.n != 0 {
		return m.n
	}
	m.addr, m.n = addr, mappingAt(addr)
	return m.n
}

// mappingAt returns the length of the mapping of this process that starts
// at addr, or 0 if there is none (then nothing is released).
func mappingAt(addr uintptr) uintptr {
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(maps), "\n") {
		span, _, _ := strings.Cut(line, " ")
		lo, hi, ok := strings.Cut(span, "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 == nil && err2 == nil && uintptr(start) == addr && end > start {
			return uintptr(end - start)
		}
	}
	return 0
}

// madviseDontNeed drops the pages of [addr, addr+n) from this process's
// page tables. addr is the start of bbolt's mapping (page-aligned); the
// raw syscall keeps it a uintptr, never a Go pointer.
func madviseDontNeed(addr, n uintptr) error {
	if n == 0 {
		return nil
	}
	if _, _, e := syscall.Syscall(syscall.SYS_MADVISE, addr, n, uintptr(syscall.MADV_DONTNEED)); e != 0 {
		return e
	}
	return nil
}

// ReleasePages is DB.ReleasePages from inside a read transaction, for a
// long scan that would otherwise map in the whole of what it reads before
// the release at its end. The transaction keeps bbolt from remapping (see
// DB.ReleasePages); the pages the scan still points into map in again when
// read. In a write transaction it does nothing (bbolt may remap during one,
// from the writer's own allocations).
func (t *Tx) ReleasePages() {
	if t.tx.Writable() {
		return
	}
	_ = t.db.release(t.tx)
}

// releaseEvery is how many entries a scan reads between releases of the
// pages it mapped in: some 2,000 entries are ~1 MB of index (with the
// pages the kernel maps around each fault, a few MB). A release is ~10 µs.
const releaseEvery = 2048
