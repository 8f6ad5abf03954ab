package quota_test

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/quota"
)

func TestParseSize(t *testing.T) {
	good := map[string]int64{
		"0":        0,
		"4096":     4096,
		"100B":     100,
		"100b":     100,
		"1K":       1024,
		"512KB":    512 * 1024,
		"512kb":    512 * 1024,
		"20MB":     20 * mib,
		"20 MB":    20 * mib,
		" 20MB ":   20 * mib,
		"1.5GiB":   3 * 512 * mib,
		"2GB":      2 * 1024 * mib,
		"1TB":      1 << 40,
		"1TiB":     1 << 40,
		"3MiB":     3 * mib,
		"1M":       mib,
		"0.5KB":    512,
		"1e3":      1000,
		"7G":       7 << 30,
		"1024KiB":  mib,
		"10.9":     10, // fractions of a byte are dropped
		"4096 b":   4096,
		"0.001KiB": 1,
	}
	for in, want := range good {
		got, err := quota.ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	bad := []string{"", "MB", "-1", "-5MB", "abc", "10XB", "1.2.3", "NaN", "Inf", "+Inf", "-Inf", "1e400", "NaNMB",
		"99999999TB", "0x10", "1 2", "5PB"}
	for _, in := range bad {
		if got, err := quota.ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", in, got)
		}
	}
}

func TestParseTTL(t *testing.T) {
	good := map[string]time.Duration{
		"0":      0,
		" 0 ":    0,
		"7d":     7 * 24 * time.Hour,
		"1.5d":   36 * time.Hour,
		"6h":     6 * time.Hour,
		"90m":    90 * time.Minute,
		"1h30m":  90 * time.Minute,
		"1s":     time.Second,
		"36500d": 36500 * 24 * time.Hour,
		"168h":   168 * time.Hour,
	}
	for in, want := range good {
		got, err := quota.ParseTTL(in)
		if err != nil || got != want {
			t.Errorf("ParseTTL(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	bad := []string{"", "d", "-1h", "-2d", "0d", "abc", "6", "7days", "NaNd", "Infd", "-Infd", "36501d",
		"1e-30d", "1e-30h", "0.1ns", "2500000h", "876001h"}
	for _, in := range bad {
		got, err := quota.ParseTTL(in)
		if err == nil {
			t.Errorf("ParseTTL(%q) = %v, want an error", in, got)
		}
		if got != 0 {
			t.Errorf("ParseTTL(%q) returned %v with its error", in, got)
		}
	}
}

// TestParseTTLNeverNegativeOrZero pins what every accepted TTL other than
// "0" must be: positive (0 means "never expires", so a positive TTL that
// rounds to 0 would silently make entries immortal), and small enough that
// now+TTL stays representable in the index (nanoseconds since 1970 in an
// int64 run out in 2262).
func TestParseTTLNeverNegativeOrZero(t *testing.T) {
	for _, in := range []string{"1d", "0.5d", "1e-9d", "100ns", "876000h", "876001h", "2500000h", "36500d", "36500.5d"} {
		d, err := quota.ParseTTL(in)
		if err != nil {
			continue
		}
		if d <= 0 {
			t.Errorf("ParseTTL(%q) = %v", in, d)
		}
		if d > 100*365*24*time.Hour {
			t.Errorf("ParseTTL(%q) = %v, longer than 100 years", in, d)
		}
	}
}

func TestParseEmptyIsDefault(t *testing.T) {
	for _, doc := range []string{"", "\n", "# nothing\n", "scopes:\n", "scopes: {}\n", "---\n"} {
		p, err := quota.Parse([]byte(doc))
		if err != nil {
			t.Errorf("Parse(%q): %v", doc, err)
			continue
		}
		if !slices.Equal(p.Scopes(), quota.Default().Scopes()) {
			t.Errorf("Parse(%q) changed the default table: %+v", doc, p.Scopes())
		}
	}
}

func TestParseOverridesAndAdditions(t *testing.T) {
	doc := `
scopes:
  task:    {quota: 200MB}
  system:  {ttl: 7d}
  project: {ttl: 0}
  zeta:    {quota: 1GB, ttl: 6h}
  alpha:   {quota: 100B, ttl: 90m}
  scratch:
    quota: 1.5KiB
    ttl: 1h
`
	p, err := quota.Parse([]byte(doc))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	want := []quota.Scope{
		{Name: "system", Quota: 10 * mib, TTL: 168 * time.Hour}, // ttl 7d == 168h, quota unchanged
		{Name: "instructions", Quota: 5 * mib, TTL: 168 * time.Hour},
		{Name: "project", Quota: 20 * mib, TTL: 0}, // never expires
		{Name: "task", Quota: 200 * mib, TTL: 24 * time.Hour},
		{Name: "artifacts", Quota: 200 * mib, TTL: 48 * time.Hour},
		{Name: "alpha", Quota: 100, TTL: 90 * time.Minute},
		{Name: "scratch", Quota: 1536, TTL: time.Hour},
		{Name: "zeta", Quota: 1 << 30, TTL: 6 * time.Hour},
	}
	if got := p.Scopes(); !slices.Equal(got, want) {
		t.Fatalf("Scopes:\n got %+v\nwant %+v", got, want)
	}
	// The order is stable from one parse to the next.
	for i := 0; i < 20; i++ {
		q, err := quota.Parse([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(q.Names(), p.Names()) {
			t.Fatalf("order changed between parses: %v vs %v", q.Names(), p.Names())
		}
	}
	// The default policy is not changed by a parse.
	if s, _ := quota.Default().Scope("task"); s.Quota != 100*mib {
		t.Fatalf("Parse changed the default table: %+v", s)
	}
}

func TestParseErrors(t *testing.T) {
	cases := map[string]struct{ doc, want string }{
		"unknown top-level key": {"limits: {}\n", "limits"},
		"unknown scope key":     {"scopes:\n  task: {quota: 1MB, size: 2}\n", "size"},
		"misspelt ttl":          {"scopes:\n  task: {tll: 6h}\n", "tll"},
		"bad size":              {"scopes:\n  task: {quota: lots}\n", "lots"},
		"negative size":         {"scopes:\n  task: {quota: -5MB}\n", "-5MB"},
		"zero quota":            {"scopes:\n  task: {quota: 0}\n", "positive"},
		"sub-byte quota":        {"scopes:\n  task: {quota: 0.5}\n", "positive"},
		"bad ttl":               {"scopes:\n  task: {ttl: soon}\n", "soon"},
		"negative ttl":          {"scopes:\n  task: {ttl: -6h}\n", "-6h"},
		"nan ttl":               {"scopes:\n  task: {ttl: NaNd}\n", "NaNd"},
		"ttl past 100 years":    {"scopes:\n  task: {ttl: 2500000h}\n", "2500000h"},
		"quota as a map":        {"scopes:\n  task: {quota: {a: 1}}\n", "size"},
		"ttl as a list":         {"scopes:\n  task: {ttl: [1h]}\n", "ttl"},
		"new scope no ttl":      {"scopes:\n  extra: {quota: 1MB}\n", "extra"},
		"new scope no quota":    {"scopes:\n  extra: {ttl: 1h}\n", "extra"},
		"new scope empty":       {"scopes:\n  extra: {}\n", "extra"},
		"new scope null":        {"scopes:\n  extra:\n", "extra"},
		"upper-case scope":      {"scopes:\n  Task: {quota: 1MB, ttl: 1h}\n", "Task"},
		"scope with a dot":      {"scopes:\n  a.b: {quota: 1MB, ttl: 1h}\n", "a.b"},
		"scope with a slash":    {"scopes:\n  a/b: {quota: 1MB, ttl: 1h}\n", "a/b"},
		"scope starting digit":  {"scopes:\n  1st: {quota: 1MB, ttl: 1h}\n", "1st"},
		"scopes as a list":      {"scopes: [task]\n", ""},
		"not yaml":              {"scopes: {task: [\n", ""},
		"duplicate scope":       {"scopes:\n  task: {quota: 1MB}\n  task: {quota: 2MB}\n", "task"},
		"duplicate scopes key":  {"scopes:\n  task: {quota: 1MB}\nscopes: {}\n", "scopes"},
		"quota past 1 PiB":      {"scopes:\n  task: {quota: 1025TiB}\n", "1PiB"},
		"quota near int64":      {"scopes:\n  task: {quota: 4000000TB}\n", "1PiB"},
		"not UTF-8":             {"scopes:\n  task: {quota: \xff\xfe}\n", ""},
		"ttl of 1ns rounds":     {"scopes:\n  task: {ttl: 0.1ns}\n", "0.1ns"},
	}
	for name, c := range cases {
		p, err := quota.Parse([]byte(c.doc))
		if err == nil {
			t.Errorf("%s: Parse accepted %q: %+v", name, c.doc, p.Scopes())
			continue
		}
		if p != nil {
			t.Errorf("%s: Parse returned a policy with its error", name)
		}
		if !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %q does not mention %q", name, err, c.want)
		}
	}
}

// TestParseQuotaTotal: the largest quotas are accepted, and thousands of
// scopes of them, as long as the sum of all quotas (df's size) is a
// number; past that the config is refused rather than overflowing.
func TestParseQuotaTotal(t *testing.T) {
	p, err := quota.Parse([]byte("scopes:\n  task: {quota: 1024TiB}\n  artifacts: {quota: 1024TiB}\n  project: {quota: 1024TiB}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.TotalQuota(); got != 3<<50+15*mib {
		t.Errorf("TotalQuota %d", got)
	}
	var b strings.Builder
	b.WriteString("scopes:\n")
	for i := 0; i < 8200; i++ {
		fmt.Fprintf(&b, "  s%d: {quota: 1024TiB, ttl: 1h}\n", i)
	}
	if _, err := quota.Parse([]byte(b.String())); err == nil || !strings.Contains(err.Error(), "add up") {
		t.Errorf("8200 scopes of 1 PiB: %v, want an error", err)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.yaml")
	if err := os.WriteFile(good, []byte("scopes:\n  task: {quota: 1MB, ttl: 1h}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := quota.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	if s, _ := p.Scope("task"); s.Quota != mib || s.TTL != time.Hour {
		t.Fatalf("Load: task = %+v", s)
	}
	bad := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(bad, []byte("scopes:\n  task: {quota: x}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := quota.Load(bad); err == nil || !strings.Contains(err.Error(), bad) {
		t.Fatalf("Load of a bad file: %v (want an error naming the file)", err)
	}
	if _, err := quota.Load(filepath.Join(dir, "missing.yaml")); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}
