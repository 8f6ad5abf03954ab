package index

// CrashForTest closes the index the way a killed process leaves it: the
// journal's records stay where they are, no checkpoint.
func (db *DB) CrashForTest() error {
	db.bg.Wait()
	db.commitMu.Lock()
	defer db.commitMu.Unlock()
	if db.j != nil {
		db.j.f.Close()
		db.j = nil
	}
	db.ov.Store(nil)
	return db.bolt.Close()
}

// JournalPathForTest is the journal of the index at path.
func JournalPathForTest(path string) string { return journalPath(path) }

// WaitForTest waits for a checkpoint running in the background.
func (db *DB) WaitForTest() { db.bg.Wait() }
