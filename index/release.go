package index

import (
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
//     page size), which bbolt never lets exceed the mapped size.
func (db *DB) ReleasePages() error {
	return guard(db.path, func() error {
		return db.bolt.View(func(tx *bolt.Tx) error {
			info := db.bolt.Info()
			return madviseDontNeed(info.Data, uintptr(tx.Size()))
		})
	})
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
	_ = madviseDontNeed(t.tx.DB().Info().Data, uintptr(t.tx.Size()))
}

// releaseEvery is how many entries a scan reads between releases of the
// pages it mapped in: some 2,000 entries are ~1 MB of index (with the
// pages the kernel maps around each fault, a few MB). A release is ~10 µs.
const releaseEvery = 2048
