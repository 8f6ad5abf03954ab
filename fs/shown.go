package fs

import (
	"math"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

// shownEntry is the index entry a key file shows, without its scope and key
// (the file has those) and with its times packed: 112 bytes against
// index.Entry's 192. The kernel may hold a key file for every key of a
// scope (`ls -l` of 100,000 keys makes 100,000 of them), so this is most of
// the daemon's memory per key.
type shownEntry struct {
	fp                         index.Fingerprint
	size                       int64
	created, modified, expires int64 // Unix nanoseconds; noTime for the zero time
	ttl                        time.Duration
	mode, uid, gid, flags      uint32
	contentType                string
	meta                       map[string]string
}

// noTime packs the zero time, apart from every instant the index can hold
// (the index uses the same sentinel).
const noTime = math.MinInt64

func packTime(t time.Time) int64 {
	if t.IsZero() {
		return noTime
	}
	return t.UnixNano()
}

func unpackTime(ns int64) time.Time {
	if ns == noTime {
		return time.Time{}
	}
	return time.Unix(0, ns)
}

func packEntry(e *index.Entry) shownEntry {
	return shownEntry{
		fp: e.Fingerprint, size: e.Size,
		created: packTime(e.CreatedAt), modified: packTime(e.ModTime), expires: packTime(e.ExpiresAt),
		ttl: e.TTL, mode: e.Mode, uid: e.UID, gid: e.GID, flags: e.Flags,
		contentType: e.ContentType, meta: e.Meta,
	}
}

// entry unpacks s as the entry of scope/key.
func (s *shownEntry) entry(scope, key string) index.Entry {
	return index.Entry{
		Scope: scope, Key: key, ContentType: s.contentType, Size: s.size, Fingerprint: s.fp,
		CreatedAt: unpackTime(s.created), ModTime: unpackTime(s.modified), ExpiresAt: unpackTime(s.expires),
		TTL: s.ttl, Mode: s.mode, UID: s.uid, GID: s.gid, Flags: s.flags, Meta: s.meta,
	}
}

func (s *shownEntry) expiresAt() time.Time { return unpackTime(s.expires) }
