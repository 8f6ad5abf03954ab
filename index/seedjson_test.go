package index_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
)

func TestSeedIndexJSON(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	live := entry("instructions", "guide.md", "# guide\n", now.Add(6*time.Hour))
	live.ContentType = "text/markdown; charset=utf-8"
	live.CreatedAt = time.Date(2025, 6, 1, 6, 30, 15, 123456789, time.UTC)
	live.TTL = 90 * time.Minute
	live.Meta = map[string]string{"version": "3", "lang": "en"}
	forever := entry("instructions", "always", "x", time.Time{})
	forever.ContentType = "text/plain"
	gone := entry("instructions", "old", "y", now)          // dies exactly now
	dying := entry("instructions", "soon", "z", now.Add(1)) // one nanosecond left

	out := index.SeedIndexJSON([]index.Entry{live, forever, gone, dying}, "/workspace/.iris/kv-cache/instructions", now)
	if !bytes.HasSuffix(out, []byte("}\n")) || !bytes.Contains(out, []byte("\n  \"")) {
		t.Errorf("output is not indented JSON:\n%s", out)
	}

	var raw map[string]map[string]json.RawMessage
	if err := json.Unmarshal(out, &raw); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, out)
	}
	keys := make([]string, 0, len(raw))
	for k := range raw {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"always", "guide.md", "soon"}) {
		t.Fatalf("keys %v: expired entries must be left out, live ones kept", keys)
	}
	wantFields := []string{"content_type", "created_at", "expires_at", "fingerprint", "metadata", "original_key", "path", "size_bytes", "ttl_hours"}
	for k, rec := range raw {
		var fields []string
		for f := range rec {
			fields = append(fields, f)
		}
		slices.Sort(fields)
		if !slices.Equal(fields, wantFields) {
			t.Errorf("%s has fields %v, want %v", k, fields, wantFields)
		}
	}
	// Keys appear in order in the text.
	if a, g := strings.Index(string(out), `"always"`), strings.Index(string(out), `"guide.md"`); a < 0 || g < a {
		t.Errorf("keys not in order:\n%s", out)
	}

	var recs map[string]index.SeedRecord
	if err := json.Unmarshal(out, &recs); err != nil {
		t.Fatal(err)
	}
	g := recs["guide.md"]
	fp := fpOf("# guide\n")
	if g.OriginalKey != "guide.md" ||
		g.Path != "/workspace/.iris/kv-cache/instructions/guide.md" ||
		g.ContentType != "text/markdown; charset=utf-8" ||
		g.SizeBytes != 8 ||
		g.Fingerprint != hex.EncodeToString(fp[:]) ||
		g.CreatedAt != "2025-06-01T06:30:15.123456" ||
		g.ExpiresAt == nil || *g.ExpiresAt != "2025-06-01T18:00:00.000000" ||
		g.TTLHours != 1.5 ||
		g.Metadata["version"] != "3" || g.Metadata["lang"] != "en" || len(g.Metadata) != 2 {
		t.Errorf("guide.md rendered as %+v", g)
	}
	if len(g.Fingerprint) != 64 || strings.ToLower(g.Fingerprint) != g.Fingerprint {
		t.Errorf("fingerprint not lowercase hex: %q", g.Fingerprint)
	}
	// Never-expiring: expires_at is null; no metadata is {} not null.
	if string(raw["always"]["expires_at"]) != "null" {
		t.Errorf("expires_at of a never-expiring entry: %s", raw["always"]["expires_at"])
	}
	if string(raw["always"]["metadata"]) != "{}" {
		t.Errorf("metadata of an entry without any: %s", raw["always"]["metadata"])
	}
	if string(raw["always"]["ttl_hours"]) != "0" {
		t.Errorf("ttl_hours of a never-expiring entry: %s", raw["always"]["ttl_hours"])
	}
}

func TestSeedIndexJSONEmptyAndLocalTimes(t *testing.T) {
	out := index.SeedIndexJSON(nil, "/x", time.Now())
	if strings.TrimSpace(string(out)) != "{}" {
		t.Fatalf("empty scope renders as %q", out)
	}
	// Times are written in UTC whatever their location.
	loc := time.FixedZone("UTC+2", 2*3600)
	e := entry("task", "k", "v", time.Time{})
	e.CreatedAt = time.Date(2025, 1, 1, 2, 0, 0, 0, loc)
	r := index.SeedRecordOf(&e, "/d")
	if r.CreatedAt != "2025-01-01T00:00:00.000000" {
		t.Fatalf("created_at %q not in UTC", r.CreatedAt)
	}
	if r.ExpiresAt != nil {
		t.Fatalf("expires_at of a never-expiring entry: %q", *r.ExpiresAt)
	}
	// HTML characters are not escaped.
	e.Meta = map[string]string{"q": "<a&b>"}
	out = index.SeedIndexJSON([]index.Entry{e}, "/d", time.Now())
	if !bytes.Contains(out, []byte(`"<a&b>"`)) {
		t.Fatalf("HTML-escaped output:\n%s", out)
	}
}
