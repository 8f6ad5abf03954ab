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
