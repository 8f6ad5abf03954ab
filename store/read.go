package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"syscall"

	"github.com/iriskvfs/iriskvfs/index"
)

// Value is an open, verified value. Its bytes are either held in memory
// (served from or added to the LRU) or read from its blob file, which was
// verified when opened and is immutable. Close releases the file.
type Value struct {
	Entry index.Entry
	data  []byte
	file  *os.File
	id    fileIdentity // of file, when it was verified
}

// ReadAt reads the value's bytes at off.
func (v *Value) ReadAt(p []byte, off int64) (int, error) {
	if v.file != nil {
		return v.file.ReadAt(p, off)
	}
	if off >= int64(len(v.data)) {
		return 0, io.EOF
	}
	n := copy(p, v.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// Bytes returns the value when it is held in memory. The slice is shared
// and must not be modified.
func (v *Value) Bytes() ([]byte, bool) { return v.data, v.file == nil }

// File returns the verified blob file, when the value is not in memory.
// It is read-only and must not be closed by the caller.
func (v *Value) File() *os.File { return v.file }

// Unchanged reports whether the blob file a value reads from is still the
// file that was verified (same inode, size, mtime and ctime: the test the
// store uses to trust an earlier verification). A value held in memory is
// always unchanged. A holder that keeps a Value for long (the read-only
// mount keeps one per file the kernel knows) checks it before reading, and
// opens the value again, verified anew, when it has changed.
func (v *Value) Unchanged() bool {
	if v.file == nil {
		return true
	}
	id, err := identify(v.file)
	return err == nil && id == v.id
}

// Reader returns a reader of the whole value.
func (v *Value) Reader() io.Reader { return io.NewSectionReader(v, 0, v.Entry.Size) }

// Close releases the blob file, if any.
func (v *Value) Close() error {
	if v.file != nil {
		return v.file.Close()
	}
	return nil
}

// Lookup returns the live entry of scope/key.
func (s *Store) Lookup(scope, key string) (index.Entry, error) {
	if _, err := s.checkAddress(scope, key); err != nil {
		return index.Entry{}, opErr("lookup", scope, key, err)
	}
	e, err := s.lookup(scope, key)
	return e, opErr("lookup", scope, key, err)
}

func (s *Store) lookup(scope, key string) (index.Entry, error) {
	var e index.Entry
	var found bool
	err := s.db.View(func(tx *index.Tx) error {
		var err error
		e, found, err = tx.Get(scope, key)
		return err
	})
	if err != nil {
		return e, err
	}
	if !found || e.ExpiredAt(s.now()) {
		return index.Entry{}, ErrNotFound
	}
	return e, nil
}

// Open returns the verified value of scope/key. A value whose bytes do not
// match its fingerprint is never returned: Open fails with ErrIntegrity,
// logs the scope and key, and counts the failure.
func (s *Store) Open(scope, key string) (*Value, error) {
	if _, err := s.checkAddress(scope, key); err != nil {
		return nil, opErr("open", scope, key, err)
	}
	v, err := s.openLive(scope, key)
	if err == nil && s.tracked[scope] {
		s.readsMu.Lock()
		s.reads[scope+"/"+key]++
		s.readsMu.Unlock()
	}
	return v, opErr("open", scope, key, err)
}

// OpenVersion opens the value e describes, which may no longer be its
// key's current one: a reader that resolved the key before a replacement
// may read what it resolved. It fails with ErrNotFound when that value has
// expired, or is gone from the store.
func (s *Store) OpenVersion(e index.Entry) (*Value, error) {
	if _, err := s.checkAddress(e.Scope, e.Key); err != nil {
		return nil, opErr("open", e.Scope, e.Key, err)
	}
	if e.ExpiredAt(s.now()) {
		return nil, opErr("open", e.Scope, e.Key, ErrNotFound)
	}
	v, err := s.openEntry(&e)
	if errors.Is(err, errValueReplaced) {
		err = ErrNotFound
	}
	if err == nil && s.tracked[e.Scope] {
		s.readsMu.Lock()
		s.reads[e.Scope+"/"+e.Key]++
		s.readsMu.Unlock()
	}
	return v, opErr("open", e.Scope, e.Key, err)
}

// Reads returns how often each key of the tracked scopes was opened since
// the store was opened, keyed "scope/key".
func (s *Store) Reads() map[string]int64 {
	s.readsMu.Lock()
	defer s.readsMu.Unlock()
	return maps.Clone(s.reads)
}

// errValueReplaced reports that the entry an open started from was replaced
// or removed, and its blob with it, before the blob could be opened.
var errValueReplaced = errors.New("value replaced during open")

// openLive opens the current value of scope/key. A reader racing a writer,
// renamer or deleter of the same key may find the blob of the entry it
// looked up already gone; that is not damage, so it looks the key up again.
// Each retry follows a commit that changed this key, so it ends.
func (s *Store) openLive(scope, key string) (*Value, error) {
	for {
		e, err := s.lookup(scope, key)
		if err != nil {
			return nil, err
		}
		v, err := s.openEntry(&e)
		if !errors.Is(err, errValueReplaced) {
			return v, err
		}
	}
}

// stillCurrent reports whether the index still points e's key at e's value.
func (s *Store) stillCurrent(e *index.Entry) bool {
	current := false
	_ = s.db.View(func(tx *index.Tx) error {
		c, found, err := tx.Get(e.Scope, e.Key)
		current = err == nil && found && c.Fingerprint == e.Fingerprint
		return nil
	})
	return current
}

// Get returns the verified bytes of scope/key. Meant for small values; use
// Open to stream large ones.
func (s *Store) Get(scope, key string) ([]byte, index.Entry, error) {
	v, err := s.Open(scope, key)
	if err != nil {
		return nil, index.Entry{}, err
	}
	defer v.Close()
	if b, ok := v.Bytes(); ok {
		// b is the LRU's verified copy: the caller gets its own, so that
		// changing it cannot change what later readers are served.
		return bytes.Clone(b), v.Entry, nil
	}
	b := make([]byte, v.Entry.Size)
	if _, err := io.ReadFull(v.Reader(), b); err != nil {
		return nil, index.Entry{}, opErr("get", scope, key, err)
	}
	return b, v.Entry, nil
}

func (s *Store) openEntry(e *index.Entry) (*Value, error) {
	if b, ok := s.hot.get(e.Fingerprint); ok {
		s.counters.Hits.Add(1)
		return &Value{Entry: *e, data: b}, nil
	}
	s.counters.Misses.Add(1)
	f, err := os.Open(s.BlobPath(e.Fingerprint))
	if os.IsNotExist(err) {
		// Not necessarily damage: the entry may have been replaced or
		// deleted, and its blob removed, since it was looked up.
		if !s.stillCurrent(e) {
			return nil, errValueReplaced
		}
		// Current again: a put of the same bytes may have named it anew.
		f, err = os.Open(s.BlobPath(e.Fingerprint))
		if os.IsNotExist(err) && !s.stillCurrent(e) {
			return nil, errValueReplaced
		}
	}
	if err != nil {
		if os.IsNotExist(err) {
			return nil, s.integrityFailure(e, "blob file is missing")
		}
		return nil, err
	}
	id, err := identify(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if id.size != e.Size {
		f.Close()
		return nil, s.integrityFailure(e, fmt.Sprintf("blob has %d bytes, entry says %d", id.size, e.Size))
	}
	if s.hot.fits(e.Scope, e.Size) {
		// Small: read it once, hash what was read, keep the verified copy.
		buf := make([]byte, e.Size)
		_, err := io.ReadFull(f, buf)
		f.Close()
		if err != nil {
			return nil, err
		}
		if sha256.Sum256(buf) != e.Fingerprint {
			return nil, s.integrityFailure(e, "content does not match fingerprint")
		}
		s.hot.add(e.Scope, e.Fingerprint, buf)
		return &Value{Entry: *e, data: buf}, nil
	}
	if !s.verified.ok(e.Fingerprint, id) {
		h := sha256.New()
		if _, err := io.Copy(h, io.NewSectionReader(f, 0, e.Size)); err != nil {
			f.Close()
			return nil, err
		}
		if !bytes.Equal(h.Sum(nil), e.Fingerprint[:]) {
			f.Close()
			return nil, s.integrityFailure(e, "content does not match fingerprint")
		}
		s.verified.remember(e.Fingerprint, id)
	}
	return &Value{Entry: *e, file: f, id: id}, nil
}

func (s *Store) integrityFailure(e *index.Entry, why string) error {
	s.counters.VerifyFailures.Add(1)
	s.log.Error("integrity failure: refusing to serve value",
		"scope", e.Scope, "key", e.Key, "fingerprint", hex.EncodeToString(e.Fingerprint[:]),
		"reason", why, "blob", s.BlobPath(e.Fingerprint),
		"fix", "iriskvfs fsck --repair, then write the key again")
	return fmt.Errorf("%w (%s)", ErrIntegrity, why)
}

func identify(f *os.File) (fileIdentity, error) {
	fi, err := f.Stat()
	if err != nil {
		return fileIdentity{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileIdentity{size: fi.Size(), mtime: fi.ModTime().UnixNano()}, nil
	}
	return fileIdentity{
		dev: st.Dev, ino: st.Ino, size: st.Size,
		mtime: st.Mtim.Nano(), ctim: st.Ctim.Nano(),
	}, nil
}

// Verify re-reads the value of scope/key from its blob file and checks it
// against the fingerprint, whatever the caches hold. A mismatch is an
// integrity failure (logged, counted), and the value's cached copies are
// dropped, so that a repair is not hidden by a verified copy in memory.
func (s *Store) Verify(scope, key string) (index.Entry, error) {
	if _, err := s.checkAddress(scope, key); err != nil {
		return index.Entry{}, opErr("verify", scope, key, err)
	}
	e, err := s.lookup(scope, key)
	if err != nil {
		return index.Entry{}, opErr("verify", scope, key, err)
	}
	f, err := os.Open(s.BlobPath(e.Fingerprint))
	if err != nil {
		if os.IsNotExist(err) && s.stillCurrent(&e) {
			return e, opErr("verify", scope, key, s.integrityFailure(&e, "blob file is missing"))
		}
		return e, opErr("verify", scope, key, err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		return e, opErr("verify", scope, key, err)
	}
	if n != e.Size || !bytes.Equal(h.Sum(nil), e.Fingerprint[:]) {
		s.hot.remove(e.Fingerprint)
		s.verified.forget(e.Fingerprint)
		return e, opErr("verify", scope, key, s.integrityFailure(&e, "content does not match fingerprint"))
	}
	return e, nil
}
