package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
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
	e, err := s.lookup(scope, key)
	if err != nil {
		return nil, opErr("open", scope, key, err)
	}
	v, err := s.openEntry(&e)
	return v, opErr("open", scope, key, err)
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
		return b, v.Entry, nil
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
	if s.hot.fits(e.Size) {
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
		s.hot.add(e.Fingerprint, buf)
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
	return &Value{Entry: *e, file: f}, nil
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
