package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
)

// A small put is made durable by the index journal alone (index/journal.go):
// its value file is named without a sync, and the journal record that
// commits its entry carries the value too. Until a checkpoint has synced
// the store's files (syncValues), a crash may leave the file short or
// missing, and opening the store writes it again from the record
// (replayValues) before the entry is replayed. One fdatasync of the journal
// instead of an fsync of the file and bbolt's two.

// writeBlobJournaled writes a value staged in memory as blob fp, unsynced,
// and returns the attachment that stands for it in the journal
// (encodeAttachment). The file is made unnamed in the blob's own directory
// (O_TMPFILE: its inode is allocated there, not in tmp/ among every other
// staged value's) and linked under its name once whole: a reader never
// sees part of it under that name. It returns nil when the name is taken
// (a blob some entry may rely on is never replaced by a file not synced)
// or the filesystem cannot make unnamed files; the caller then takes the
// route that syncs the value in its own file.
func (w *Writer) writeBlobJournaled(fp index.Fingerprint, origin []byte) ([]byte, error) {
	blob := w.s.BlobPath(fp)
	fd, err := unix.Open(filepath.Dir(blob), unix.O_TMPFILE|unix.O_WRONLY|unix.O_CLOEXEC, 0o444)
	if err != nil {
		if errors.Is(err, unix.EROFS) {
			return nil, &os.PathError{Op: "open", Path: filepath.Dir(blob), Err: err}
		}
		return nil, nil // EOPNOTSUPP, EISDIR, ...: no unnamed files here
	}
	f := os.NewFile(uintptr(fd), blob)
	defer f.Close()
	setOriginXattr(f, origin)
	if _, err := f.Write(w.mem[:w.size]); err != nil {
		return nil, err
	}
	err = unix.Linkat(unix.AT_FDCWD, fmt.Sprintf("/proc/self/fd/%d", fd), unix.AT_FDCWD, blob, unix.AT_SYMLINK_FOLLOW)
	if errors.Is(err, unix.ENOENT) {
		// No /proc: by the descriptor itself (needs CAP_DAC_READ_SEARCH).
		err = unix.Linkat(fd, "", unix.AT_FDCWD, blob, unix.AT_EMPTY_PATH)
	}
	switch {
	case err == nil:
	case errors.Is(err, unix.EEXIST), errors.Is(err, unix.ENOENT), errors.Is(err, unix.EPERM):
		return nil, nil
	default:
		return nil, &os.LinkError{Op: "link", Old: f.Name(), New: blob, Err: err}
	}
	attach, value := encodeAttachment(fp, origin, int(w.size))
	copy(value, w.mem[:w.size])
	return attach, nil
}

// encodeAttachment lays out a journaled value: its fingerprint, its
// origin (originXattr's JSON, for the file written again from it), the
// value. It returns the attachment and the part the value goes in.
func encodeAttachment(fp index.Fingerprint, origin []byte, size int) (attach, value []byte) {
	attach = make([]byte, 0, len(fp)+binary.MaxVarintLen64+len(origin)+size)
	attach = append(attach, fp[:]...)
	attach = binary.AppendUvarint(attach, uint64(len(origin)))
	attach = append(attach, origin...)
	n := len(attach)
	attach = attach[:n+size]
	return attach, attach[n:]
}

func decodeAttachment(a []byte) (fp index.Fingerprint, origin, value []byte, err error) {
	if len(a) < len(fp) {
		return fp, nil, nil, fmt.Errorf("journal attachment of %d bytes", len(a))
	}
	copy(fp[:], a)
	rest := a[len(fp):]
	n, k := binary.Uvarint(rest)
	if k <= 0 || n > uint64(len(rest)-k) {
		return fp, nil, nil, fmt.Errorf("journal attachment for %x: bad origin length", fp[:6])
	}
	origin, value = rest[k:k+int(n)], rest[k+int(n):]
	if sha256.Sum256(value) != fp {
		return fp, nil, nil, fmt.Errorf("journal attachment for %x does not hash to it", fp[:6])
	}
	return fp, origin, value, nil
}

// replayValues writes again, durably, the value files of a journal record
// being replayed whose file a crash left short, damaged or missing.
func (s *Store) replayValues(attach [][]byte) error {
	for _, a := range attach {
		fp, origin, value, err := decodeAttachment(a)
		if err != nil {
			return err
		}
		path := s.BlobPath(fp)
		if have, err := os.ReadFile(path); err == nil && bytes.Equal(have, value) {
			continue
		}
		if err := writeFileDurably(path, filepath.Join(s.dir, tmpDir), value, origin); err != nil {
			return err
		}
		s.log.Warn("value file restored from the index journal", "fingerprint", fmt.Sprintf("%x", fp[:]), "bytes", len(value))
	}
	return nil
}

// writeFileDurably replaces path with a read-only file holding data, synced
// and named durably.
func writeFileDurably(path, tmpDir string, data, origin []byte) error {
	f, err := os.CreateTemp(tmpDir, "replay-*"+tmpSuffix)
	if err != nil {
		return err
	}
	tmp := f.Name()
	setOriginXattr(f, origin)
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(0o444)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path))
}

// syncValues makes every value file named so far durable, before a
// checkpoint empties the journal that could restore them: one syncfs of
// the store's filesystem instead of an fsync per file.
func (s *Store) syncValues() error {
	d, err := os.Open(s.dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return unix.Syncfs(int(d.Fd()))
}
