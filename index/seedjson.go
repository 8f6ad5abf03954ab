package index

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"path"
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
// _index.json: an object keyed by key name, indented, keys in order.
func SeedIndexJSON(entries []Entry, dir string, now time.Time) []byte {
	m := make(map[string]SeedRecord, len(entries))
	for i := range entries {
		if entries[i].ExpiredAt(now) {
			continue
		}
		m[entries[i].Key] = SeedRecordOf(&entries[i], dir)
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(m) // cannot fail: strings and numbers only
	return buf.Bytes()
}
