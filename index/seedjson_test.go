package index_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
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

// referenceSeedIndexJSON is the format's definition: encoding/json's
// indenting encoder over a map. SeedIndexJSON must write the same bytes.
func referenceSeedIndexJSON(entries []index.Entry, dir string, now time.Time) []byte {
	m := make(map[string]index.SeedRecord, len(entries))
	for i := range entries {
		if !entries[i].ExpiredAt(now) {
			m[entries[i].Key] = index.SeedRecordOf(&entries[i], dir)
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	_ = enc.Encode(m)
	return buf.Bytes()
}

func TestSeedIndexJSONMatchesEncodingJSON(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	odd := []string{"plain", "quote\"d", `back\slash`, "tab\there", "nl\n", "\x00\x1f\b\f", "<html>&", "ünïcödé", "bad\xffutf8", "\u2028\u2029", ""}
	pick := func() string { return odd[rng.IntN(len(odd))] }
	ttls := []time.Duration{0, time.Nanosecond, time.Millisecond, 90 * time.Minute, 1e6 * time.Hour, 3 * time.Second}
	for round := 0; round < 200; round++ {
		n := rng.IntN(8)
		entries := make([]index.Entry, 0, n)
		for i := 0; i < n; i++ {
			var exp time.Time
			if rng.IntN(3) == 0 {
				exp = now.Add(time.Duration(rng.IntN(5)-2) * time.Hour)
			}
			e := entry("task", fmt.Sprintf("k%d%s", i, pick()), pick(), exp) // a scope's keys are unique
			e.ContentType = pick()
			e.TTL = ttls[rng.IntN(len(ttls))]
			e.CreatedAt = now.Add(-time.Duration(rng.Int64N(1e15)))
			if rng.IntN(2) == 0 {
				e.Meta = map[string]string{}
				for j := rng.IntN(4); j > 0; j-- {
					e.Meta[pick()+fmt.Sprint(j)] = pick()
				}
			}
			entries = append(entries, e)
		}
		dir := "/mnt/" + pick()
		got, want := index.SeedIndexJSON(entries, dir, now), referenceSeedIndexJSON(entries, dir, now)
		if !bytes.Equal(got, want) {
			t.Fatalf("round %d: output differs from encoding/json\n got: %s\nwant: %s", round, got, want)
		}
		if size := index.SeedIndexJSONSize(entries, dir, now); size != int64(len(want)) {
			t.Fatalf("round %d: SeedIndexJSONSize %d, document is %d bytes", round, size, len(want))
		}
		z := index.NewSeedIndexSizer(dir, now)
		for i := len(entries) - 1; i >= 0; i-- { // in any order
			z.Add(&entries[i])
		}
		if size := z.Size(); size != int64(len(want)) {
			t.Fatalf("round %d: SeedIndexSizer %d, document is %d bytes", round, size, len(want))
		}
	}
}

func BenchmarkSeedIndexJSON100k(b *testing.B) {
	now := time.Now()
	entries := make([]index.Entry, 100_000)
	for i := range entries {
		entries[i] = entry("task", fmt.Sprintf("key-%06d", i), "v", time.Time{})
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		index.SeedIndexJSON(entries, "/workspace/.iris/kv-cache/task", now)
	}
}

// TestSeedIndexSizerPlainRecords: the sizer counts the common record (a
// key by the key rules, no metadata) without formatting it; the count must
// be the document's length, whatever the sizes, times, TTLs, content types
// and directory (a "/" root, an unclean one, one JSON escapes).
func TestSeedIndexSizerPlainRecords(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	now := time.Date(2026, 11, 26, 3, 0, 0, 0, time.UTC)
	keyChars := "abcXYZ019._-"
	ttls := []time.Duration{0, time.Nanosecond, 90 * time.Minute, 24 * time.Hour, 1e6 * time.Hour, 1234567 * time.Millisecond}
	cts := []string{"", "text/plain", "application/octet-stream", "text/x; q=\"1\"", "é"}
	for _, dir := range []string{"/workspace/.iris/kv-cache/task", "/", "/mnt/x/", "/mnt/a b", "/mnt/\"q\"", "rel/dir"} {
		entries := make([]index.Entry, 0, 300)
		for i := 0; i < 300; i++ {
			key := fmt.Sprintf("%c%d", "aZ7"[rng.IntN(3)], i)
			for j := rng.IntN(12); j > 0; j-- {
				key += string(keyChars[rng.IntN(len(keyChars))])
			}
			e := entry("task", key, key, time.Time{})
			e.Size = rng.Int64N(1 << uint(rng.IntN(40)+1))
			e.CreatedAt = now.Add(-time.Duration(rng.Int64N(1e17)))
			if rng.IntN(2) == 0 {
				e.ExpiresAt = now.Add(time.Duration(rng.Int64N(1e17)) - time.Hour)
			}
			e.TTL = ttls[rng.IntN(len(ttls))]
			e.ContentType = cts[rng.IntN(len(cts))]
			if rng.IntN(20) == 0 {
				e.Meta = map[string]string{"m": "v"}
			}
			entries = append(entries, e)
		}
		want := len(index.SeedIndexJSON(entries, dir, now))
		z := index.NewSeedIndexSizer(dir, now)
		for i := range entries {
			z.Add(&entries[i])
		}
		if got := z.Size(); got != int64(want) {
			t.Errorf("dir %q: sizer says %d bytes, the document is %d", dir, got, want)
		}
	}
}
