package index

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"
)

// The journal makes a commit durable with one write and one fdatasync
// instead of bbolt's two (page writes, sync, meta page, sync), and lets the
// store's put carry a small value in the same write instead of syncing its
// file (Tx.Attach). Committed changes live in the overlay until a
// checkpoint writes them into bbolt with one synced commit and empties the
// journal; opening the index replays whatever a crash left in it.
//
// The file is allocated and zeroed once (journalSize), so that a record's
// fdatasync writes data blocks only: no size or extent change to commit.
// Layout: a header block, then records one after the other from
// journalHeader. Header: magic, generation, the index's journal id (a
// journal belongs to one index file: a rebuilt or restored index ignores
// it), CRC. Record: magic, length of the body, CRC-32C of generation,
// sequence and body, generation, sequence, body. A replay takes the records
// of the header's generation with sequence 0, 1, 2, ... and stops at the
// first that is not one (torn, of an older generation, or zeros): a record
// is written whole before its commit returns, so what follows the first bad
// one was never acknowledged. A reset writes the header with the next
// generation, which disowns every record left in the file.
//
// Records hold the new value of each key they change (not "add 1"), so
// replaying a record that a checkpoint had already applied changes nothing.
const (
	journalSize   = 4 << 20
	journalHeader = 4096
	journalMagic  = 0x4952534a // "IRSJ"
	recordMagic   = 0x49525352 // "IRSR"
	recordHead    = 4 + 4 + 4 + 8 + 8

	// JournalMaxAttach is the largest attachment a journaled commit takes
	// (a bigger value is synced in its own file).
	JournalMaxAttach = 256 << 10
)

var crcTable = crc32.MakeTable(crc32.Castagnoli)

var keyJournalID = []byte("journal-id")

type journal struct {
	f   *os.File
	id  [16]byte
	gen uint64
	seq uint64
	off int64 // where the next record goes
}

// journalPath is the journal of the index at path.
func journalPath(path string) string { return path + ".journal" }

// openJournal opens (or creates) the journal of the index whose id is id
// and returns it with the records to replay, oldest first.
// A missing journal is created only when create is set (the first commit
// that needs it): without, openJournal returns nil and no error.
func openJournal(path string, id [16]byte, create bool) (*journal, [][]byte, error) {
	flags := os.O_RDWR
	if create {
		flags |= os.O_CREATE
	}
	f, err := os.OpenFile(path, flags, 0o600)
	if !create && errors.Is(err, os.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	j := &journal{f: f, id: id}
	fi, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	if fi.Size() < journalSize {
		// New (or cut short by a crash while it was made): zero it all,
		// then a first header, each durable before it is relied on.
		if err := j.allocate(); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("journal %s: %w", path, err)
		}
		// A journal cut short held no record: its header is written last.
		return j, nil, nil
	}
	hdr := make([]byte, journalHeader)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		f.Close()
		return nil, nil, err
	}
	gen, hid, ok := parseJournalHeader(hdr)
	if !ok || hid != id {
		// Not ours (the index was rebuilt or replaced) or unreadable:
		// nothing in it can be trusted to belong to this index.
		j.gen = gen
		if err := j.reset(); err != nil {
			f.Close()
			return nil, nil, err
		}
		return j, nil, nil
	}
	j.gen = gen
	recs, end := readRecords(f, gen)
	j.off, j.seq = end, uint64(len(recs))
	return j, recs, nil
}

// readRecords returns the bodies of the records of generation gen, in
// order, and where the next record goes.
func readRecords(f io.ReaderAt, gen uint64) (recs [][]byte, end int64) {
	end = journalHeader
	for {
		body, next, ok := readRecord(f, end, gen, uint64(len(recs)))
		if !ok {
			return recs, end
		}
		recs = append(recs, body)
		end = next
	}
}

// JournalAttachments returns the attachments of the records in the journal
// beside the index at path, whichever index it belongs to, oldest first: a
// rebuild of a damaged index writes again from them the values whose files
// a crash left short. A missing or unreadable journal has none.
func JournalAttachments(path string) ([][]byte, error) {
	f, err := os.Open(journalPath(path))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	hdr := make([]byte, journalHeader)
	if _, err := f.ReadAt(hdr, 0); err != nil {
		return nil, nil
	}
	gen, _, ok := parseJournalHeader(hdr)
	if !ok {
		return nil, nil
	}
	recs, _ := readRecords(f, gen)
	var out [][]byte
	for _, body := range recs {
		if _, attach, err := decodeRecord(body); err == nil {
			out = append(out, attach...)
		}
	}
	return out, nil
}

func (j *journal) allocate() error {
	zero := make([]byte, 1<<20)
	for off := int64(0); off < journalSize; off += int64(len(zero)) {
		if _, err := j.f.WriteAt(zero, off); err != nil {
			return err
		}
	}
	if err := j.f.Sync(); err != nil {
		return err
	}
	if err := syncParent(j.f.Name()); err != nil {
		return err
	}
	return j.reset()
}

// reset starts the next generation: the records in the file are no longer
// replayed.
func (j *journal) reset() error {
	j.gen++
	hdr := make([]byte, journalHeader)
	le := binary.LittleEndian
	le.PutUint32(hdr[0:], journalMagic)
	le.PutUint64(hdr[8:], j.gen)
	copy(hdr[16:32], j.id[:])
	le.PutUint32(hdr[4:], crc32.Checksum(hdr[8:32], crcTable))
	if _, err := j.f.WriteAt(hdr, 0); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.off, j.seq = journalHeader, 0
	return nil
}

func parseJournalHeader(hdr []byte) (gen uint64, id [16]byte, ok bool) {
	le := binary.LittleEndian
	if le.Uint32(hdr[0:]) != journalMagic || le.Uint32(hdr[4:]) != crc32.Checksum(hdr[8:32], crcTable) {
		return le.Uint64(hdr[8:]), id, false
	}
	copy(id[:], hdr[16:32])
	return le.Uint64(hdr[8:]), id, true
}

// fits reports whether a record of n body bytes fits after the last one.
func (j *journal) fits(n int) bool { return j.off+int64(recordHead+n) <= journalSize }

// fitsEmpty reports whether a record of n body bytes fits at all.
func fitsEmpty(n int) bool { return journalHeader+int64(recordHead+n) <= journalSize }

// append writes a record and makes it durable.
func (j *journal) append(body []byte) error {
	rec := make([]byte, recordHead+len(body))
	le := binary.LittleEndian
	le.PutUint32(rec[0:], recordMagic)
	le.PutUint32(rec[4:], uint32(len(body)))
	le.PutUint64(rec[12:], j.gen)
	le.PutUint64(rec[20:], j.seq)
	copy(rec[recordHead:], body)
	le.PutUint32(rec[8:], crc32.Checksum(rec[12:], crcTable))
	if _, err := j.f.WriteAt(rec, j.off); err != nil {
		return err
	}
	if err := unix.Fdatasync(int(j.f.Fd())); err != nil {
		return err
	}
	j.off += int64(len(rec))
	j.seq++
	return nil
}

func readRecord(r io.ReaderAt, off int64, gen, seq uint64) (body []byte, next int64, ok bool) {
	le := binary.LittleEndian
	head := make([]byte, recordHead)
	if off+recordHead > journalSize {
		return nil, 0, false
	}
	if _, err := r.ReadAt(head, off); err != nil {
		return nil, 0, false
	}
	n := int64(le.Uint32(head[4:]))
	if le.Uint32(head[0:]) != recordMagic || off+recordHead+n > journalSize ||
		le.Uint64(head[12:]) != gen || le.Uint64(head[20:]) != seq {
		return nil, 0, false
	}
	rec := make([]byte, recordHead+n)
	if _, err := r.ReadAt(rec, off); err != nil {
		return nil, 0, false
	}
	if le.Uint32(rec[8:]) != crc32.Checksum(rec[12:], crcTable) {
		return nil, 0, false
	}
	return rec[recordHead:], off + recordHead + n, true
}

// encodeRecord is a commit's changes and attachments as a record body:
// uvarint counts and lengths, buckets and keys in a fixed order.
func encodeRecord(c changes, attach [][]byte) []byte {
	var b []byte
	b = binary.AppendUvarint(b, uint64(len(c)))
	for _, name := range sortedKeys(c) {
		m := c[name]
		b = appendBytes(b, []byte(name))
		b = binary.AppendUvarint(b, uint64(len(m)))
		for _, k := range sortedKeys(m) {
			ch := m[k]
			b = appendBytes(b, []byte(k))
			if ch.del {
				b = append(b, 1)
				continue
			}
			b = append(b, 0)
			b = appendBytes(b, ch.val)
		}
	}
	b = binary.AppendUvarint(b, uint64(len(attach)))
	for _, a := range attach {
		b = appendBytes(b, a)
	}
	return b
}

var errBadRecord = errors.New("journal record does not decode")

func decodeRecord(body []byte) (changes, [][]byte, error) {
	r := bytes.NewReader(body)
	readBytes := func() ([]byte, error) {
		n, err := binary.ReadUvarint(r)
		if err != nil || n > uint64(r.Len()) {
			return nil, errBadRecord
		}
		b := make([]byte, n)
		_, _ = io.ReadFull(r, b)
		return b, nil
	}
	c := changes{}
	nb, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, nil, errBadRecord
	}
	for ; nb > 0; nb-- {
		name, err := readBytes()
		if err != nil {
			return nil, nil, err
		}
		nk, err := binary.ReadUvarint(r)
		if err != nil {
			return nil, nil, errBadRecord
		}
		for ; nk > 0; nk-- {
			k, err := readBytes()
			if err != nil {
				return nil, nil, err
			}
			flag, err := r.ReadByte()
			if err != nil {
				return nil, nil, errBadRecord
			}
			if flag == 1 {
				c.set(string(name), k, nil, true)
				continue
			}
			v, err := readBytes()
			if err != nil {
				return nil, nil, err
			}
			c.set(string(name), k, v, false)
		}
	}
	na, err := binary.ReadUvarint(r)
	if err != nil {
		return nil, nil, errBadRecord
	}
	var attach [][]byte
	for ; na > 0; na-- {
		a, err := readBytes()
		if err != nil {
			return nil, nil, err
		}
		attach = append(attach, a)
	}
	if r.Len() != 0 {
		return nil, nil, errBadRecord
	}
	return c, attach, nil
}

func appendBytes(b, v []byte) []byte {
	b = binary.AppendUvarint(b, uint64(len(v)))
	return append(b, v...)
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func newJournalID() ([16]byte, error) {
	var id [16]byte
	_, err := rand.Read(id[:])
	return id, err
}

func syncParent(path string) error {
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
