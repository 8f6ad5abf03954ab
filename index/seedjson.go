package index

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"maps"
	"math"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"
)

// seedTimeFormat is the predecessor's timestamp format (Python's isoformat
// of a naive datetime). iriskvfs writes UTC in it.
const seedTimeFormat = "2006-01-02T15:04:05.000000"

// SeedRecord is one entry of the predecessor's _index.json format.
type SeedRecord struct {
	OriginalKey string            `json:"original_key"`
	Path        string            `json:"path"`
	ContentType string            `json:"content_type"`
	SizeBytes   int64             `json:"size_bytes"`
	Fingerprint string            `json:"fingerprint"`
	CreatedAt   string            `json:"created_at"`
	ExpiresAt   *string           `json:"expires_at"`
	TTLHours    float64           `json:"ttl_hours"`
	Metadata    map[string]string `json:"metadata"`
}

// SeedRecordOf renders e in the predecessor's format; dir is the directory
// the key's path is reported in (the scope directory of the mount).
func SeedRecordOf(e *Entry, dir string) SeedRecord {
	r := SeedRecord{
		OriginalKey: e.Key,
		Path:        path.Join(dir, e.Key),
		ContentType: e.ContentType,
		SizeBytes:   e.Size,
		Fingerprint: hex.EncodeToString(e.Fingerprint[:]),
		CreatedAt:   e.CreatedAt.UTC().Format(seedTimeFormat),
		TTLHours:    e.TTL.Hours(),
		Metadata:    e.Meta,
	}
	if !e.ExpiresAt.IsZero() {
		s := e.ExpiresAt.UTC().Format(seedTimeFormat)
		r.ExpiresAt = &s
	}
	if r.Metadata == nil {
		r.Metadata = map[string]string{}
	}
	return r
}

// SeedIndexJSON renders the live entries of a scope as the predecessor's
// _index.json: an object keyed by key name, indented, keys in order —
// byte for byte what encoding/json's indenting encoder writes for a
// map[string]SeedRecord, without its map, reflection and re-indenting pass
// (ten times faster: a scope of 100,000 keys is 36 MB).
func SeedIndexJSON(entries []Entry, dir string, now time.Time) []byte {
	live := liveSorted(entries, now)
	if len(live) == 0 {
		return []byte(emptySeedIndex)
	}
	b := make([]byte, 0, len(live)*(420+2*len(dir)))
	for i, e := range live {
		b = appendSeedRecord(b, i == 0, e, dir)
	}
	return append(b, seedIndexEnd...)
}

// SeedIndexJSONSize is len(SeedIndexJSON(entries, dir, now)), computed
// without holding the document: `ls -l` sizes a scope's _index.json, and
// 100,000 keys make 36 MB nobody asked to read.
func SeedIndexJSONSize(entries []Entry, dir string, now time.Time) int64 {
	live := liveSorted(entries, now)
	if len(live) == 0 {
		return int64(len(emptySeedIndex))
	}
	var scratch []byte
	size := int64(len(seedIndexEnd))
	for i, e := range live {
		scratch = appendSeedRecord(scratch[:0], i == 0, e, dir)
		size += int64(len(scratch))
	}
	return size
}

// SeedIndexSizer is SeedIndexJSONSize one entry at a time, for a scan that
// holds no list of entries (Store.ForEachLive): Add each entry of the scope
// once, in any order; Size is then the size of its _index.json at now.
type SeedIndexSizer struct {
	dir      string
	now      time.Time
	n        int
	size     int64
	scratch  []byte
	fixed    int64 // the literal text of a plain record (-1: not yet known)
	dirPlain int8  // 1: dir is plain (see plainDir); -1: not; 0: not yet known
}

// NewSeedIndexSizer sizes the _index.json of a scope shown in dir at now.
func NewSeedIndexSizer(dir string, now time.Time) *SeedIndexSizer {
	return &SeedIndexSizer{dir: dir, now: now, fixed: -1}
}

// Add counts e, if it is alive at the sizer's now.
func (z *SeedIndexSizer) Add(e *Entry) {
	if e.ExpiredAt(z.now) {
		return
	}
	if n, ok := z.plainSize(e); ok {
		z.size += n
	} else {
		z.scratch = appendSeedRecord(z.scratch[:0], z.n == 0, e, z.dir)
		z.size += int64(len(z.scratch))
	}
	z.n++
}

// plainSize is len(appendSeedRecord(nil, _, e, dir)) counted rather than
// written, for the common record: a key by the key rules, a content type
// JSON writes as it is, no metadata, times within years 0–9999 (26
// characters each). Sizing the _index.json of 100,000 keys (every `ls -l`
// after a change) then formats no times and builds no paths. ok is false
// for any other record, which the caller formats.
func (z *SeedIndexSizer) plainSize(e *Entry) (n int64, ok bool) {
	if len(e.Meta) > 0 || !plainKey(e.Key) || !plainJSON(e.ContentType) || !z.plainDir() ||
		!fixedWidthTime(e.CreatedAt) || !e.ExpiresAt.IsZero() && !fixedWidthTime(e.ExpiresAt) {
		return 0, false
	}
	if z.fixed < 0 {
		// The literal text of a record: format one and take away what
		// varies, so the two can never disagree.
		cal := Entry{Key: "k", CreatedAt: time.Unix(0, 0)}
		z.fixed = int64(len(appendSeedRecord(nil, false, &cal, z.dir))) - z.variable(&cal)
	}
	return z.fixed + z.variable(e), true
}

// variable is the length of the parts of a plain record that vary.
func (z *SeedIndexSizer) variable(e *Entry) int64 {
	var buf [40]byte
	n := 2 * (len(e.Key) + 2) // "key" twice, quoted
	n += z.joinLen(e.Key) + 2 // "dir/key"
	n += len(e.ContentType) + 2
	n += len(strconv.AppendInt(buf[:0], e.Size, 10))
	n += 2 * FingerprintSize
	n += len(seedTimeFormat) // created_at
	if e.ExpiresAt.IsZero() {
		n += len("null")
	} else {
		n += len(seedTimeFormat) + 2
	}
	n += len(appendJSONFloat(buf[:0], e.TTL.Hours()))
	return int64(n)
}

// joinLen is len(path.Join(dir, key)) for a clean dir and a plain key.
func (z *SeedIndexSizer) joinLen(key string) int {
	if z.dir == "/" {
		return 1 + len(key)
	}
	return len(z.dir) + 1 + len(key)
}

// plainDir reports whether the sizer's dir is clean, absolute and written
// by JSON as it is (so path.Join only adds a slash and the key).
func (z *SeedIndexSizer) plainDir() bool {
	if z.dirPlain == 0 {
		z.dirPlain = -1
		if strings.HasPrefix(z.dir, "/") && path.Clean(z.dir) == z.dir && plainJSON(z.dir) {
			z.dirPlain = 1
		}
	}
	return z.dirPlain > 0
}

// plainKey reports whether key follows the key rules (a letter or digit,
// then letters, digits, '.', '_', '-'): JSON writes it as it is and
// path.Join appends it as it is.
func plainKey(key string) bool {
	if key == "" {
		return false
	}
	for i := 0; i < len(key); i++ {
		c := key[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case i > 0 && (c == '.' || c == '_' || c == '-'):
		default:
			return false
		}
	}
	return true
}

// plainJSON reports whether appendJSONString writes s between quotes as
// it is.
func plainJSON(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			return false
		}
	}
	return true
}

// fixedWidthTime reports whether t, in UTC, formats with seedTimeFormat
// in exactly len(seedTimeFormat) characters (a four-digit year).
func fixedWidthTime(t time.Time) bool {
	y := t.UTC().Year()
	return y >= 0 && y <= 9999
}

// Size is the size of the document with the entries added.
func (z *SeedIndexSizer) Size() int64 {
	if z.n == 0 {
		return int64(len(emptySeedIndex))
	}
	return z.size + int64(len(seedIndexEnd))
}

const (
	emptySeedIndex = "{}\n"
	seedIndexEnd   = "\n}\n"
)

// liveSorted returns the entries alive at now, by key.
func liveSorted(entries []Entry, now time.Time) []*Entry {
	live := make([]*Entry, 0, len(entries))
	for i := range entries {
		if !entries[i].ExpiredAt(now) {
			live = append(live, &entries[i])
		}
	}
	byKey := func(a, b *Entry) int { return strings.Compare(a.Key, b.Key) }
	if !slices.IsSortedFunc(live, byKey) {
		slices.SortFunc(live, byKey)
	}
	return live
}

// appendSeedRecord appends one key and its record, opening the document
// before the first.
func appendSeedRecord(b []byte, first bool, e *Entry, dir string) []byte {
	if first {
		b = append(b, '{')
	} else {
		b = append(b, ',')
	}
	b = append(b, "\n  "...)
	b = appendJSONString(b, e.Key)
	b = append(b, ": {\n    \"original_key\": "...)
	b = appendJSONString(b, e.Key)
	b = append(b, ",\n    \"path\": "...)
	b = appendJSONString(b, path.Join(dir, e.Key))
	b = append(b, ",\n    \"content_type\": "...)
	b = appendJSONString(b, e.ContentType)
	b = append(b, ",\n    \"size_bytes\": "...)
	b = strconv.AppendInt(b, e.Size, 10)
	b = append(b, ",\n    \"fingerprint\": \""...)
	b = hex.AppendEncode(b, e.Fingerprint[:])
	b = append(b, "\",\n    \"created_at\": \""...)
	b = e.CreatedAt.UTC().AppendFormat(b, seedTimeFormat)
	b = append(b, "\",\n    \"expires_at\": "...)
	if e.ExpiresAt.IsZero() {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = e.ExpiresAt.UTC().AppendFormat(b, seedTimeFormat)
		b = append(b, '"')
	}
	b = append(b, ",\n    \"ttl_hours\": "...)
	b = appendJSONFloat(b, e.TTL.Hours())
	b = append(b, ",\n    \"metadata\": {"...)
	if len(e.Meta) > 0 {
		for j, name := range slices.Sorted(maps.Keys(e.Meta)) {
			if j > 0 {
				b = append(b, ',')
			}
			b = append(b, "\n      "...)
			b = appendJSONString(b, name)
			b = append(b, ": "...)
			b = appendJSONString(b, e.Meta[name])
		}
		b = append(b, "\n    "...)
	}
	return append(b, "}\n  }"...)
}

// appendJSONString appends s as encoding/json writes it without HTML
// escaping. Keys are plain ASCII almost always; anything else goes through
// encoding/json itself, so the two can never disagree.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c > 0x7e || c == '"' || c == '\\' {
			var buf bytes.Buffer
			enc := json.NewEncoder(&buf)
			enc.SetEscapeHTML(false)
			_ = enc.Encode(s) // a string cannot fail
			return append(b, bytes.TrimSuffix(buf.Bytes(), []byte("\n"))...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}

// appendJSONFloat appends f as encoding/json formats a float64.
func appendJSONFloat(b []byte, f float64) []byte {
	format := byte('f')
	if abs := math.Abs(f); abs != 0 && (abs < 1e-6 || abs >= 1e21) {
		format = 'e'
	}
	b = strconv.AppendFloat(b, f, format, -1, 64)
	if format == 'e' {
		// clean up e-09 to e-9, as encoding/json does
		if n := len(b); n >= 4 && b[n-4] == 'e' && b[n-3] == '-' && b[n-2] == '0' {
			b[n-2] = b[n-1]
			b = b[:n-1]
		}
	}
	return b
}
