package quota

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// configFile is the schema of the config file. Unknown keys are errors, so
// a misspelt setting is caught at start-up instead of silently ignored.
type configFile struct {
	Scopes map[string]scopeConfig `yaml:"scopes"`
}

type scopeConfig struct {
	Quota *Size     `yaml:"quota"`
	TTL   *Duration `yaml:"ttl"`
}

// Load reads a YAML config file and applies it to the default policy.
func Load(path string) (*Policy, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	p, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return p, nil
}

// Parse applies a YAML config document to the default policy. A scope named
// in the file that is not built in is added, and then needs both a quota and
// a ttl; a built-in scope keeps what the file does not change.
//
//	scopes:
//	  task:    {quota: 200MB}
//	  scratch: {quota: 1GB, ttl: 6h}
func Parse(data []byte) (*Policy, error) {
	var cf configFile
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cf); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	base := Default()
	changes := make(map[string]Scope, len(cf.Scopes))
	for name, sc := range cf.Scopes {
		if !ValidScopeName(name) {
			return nil, fmt.Errorf("scope %q: name must match %s", name, scopeNameRE)
		}
		s, builtin := base.Scope(name)
		if !builtin {
			if sc.Quota == nil || sc.TTL == nil {
				return nil, fmt.Errorf("scope %q: a new scope needs both quota and ttl", name)
			}
			s.Name = name
		}
		if sc.Quota != nil {
			if *sc.Quota <= 0 {
				return nil, fmt.Errorf("scope %q: quota must be positive", name)
			}
			if *sc.Quota > MaxQuota {
				return nil, fmt.Errorf("scope %q: quota of %d bytes is more than the largest, 1PiB", name, int64(*sc.Quota))
			}
			s.Quota = int64(*sc.Quota)
		}
		if sc.TTL != nil {
			s.TTL = time.Duration(*sc.TTL)
		}
		changes[name] = s
	}
	p := base.with(changes)
	var total int64
	for _, s := range p.Scopes() {
		if total > math.MaxInt64-s.Quota {
			return nil, errors.New("the scopes' quotas add up to more than 8EiB")
		}
		total += s.Quota
	}
	return p, nil
}

// MaxQuota is the largest quota a scope may have, 1 PiB: far beyond any
// cache, and small enough that the total quota of thousands of scopes is
// still a number (df shows it).
const MaxQuota = 1 << 50

// Size is a byte count written as a plain number or with a unit: B, KB, MB,
// GB, TB (powers of 1024, as the predecessor counted) or KiB, MiB, GiB, TiB.
type Size int64

func (s *Size) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: size must be a scalar like 20MB", n.Line)
	}
	v, err := ParseSize(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*s = Size(v)
	return nil
}

var sizeUnits = []struct {
	suffix string
	mult   int64
}{
	{"KIB", 1 << 10}, {"MIB", 1 << 20}, {"GIB", 1 << 30}, {"TIB", 1 << 40},
	{"KB", 1 << 10}, {"MB", 1 << 20}, {"GB", 1 << 30}, {"TB", 1 << 40},
	{"K", 1 << 10}, {"M", 1 << 20}, {"G", 1 << 30}, {"T", 1 << 40},
	{"B", 1},
}

// ParseSize parses a byte count such as "4096", "20MB" or "1.5GiB".
func ParseSize(str string) (int64, error) {
	s := strings.ToUpper(strings.TrimSpace(str))
	mult := int64(1)
	for _, u := range sizeUnits {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	f, err := strconv.ParseFloat(s, 64)
	if err != nil || f < 0 || math.IsNaN(f) || math.IsInf(f, 0) {
		return 0, fmt.Errorf("bad size %q (want e.g. 4096, 512KB, 20MB)", str)
	}
	v := f * float64(mult)
	if v > math.MaxInt64/2 {
		return 0, fmt.Errorf("size %q is too large", str)
	}
	return int64(v), nil
}

// Duration is a TTL written as a Go duration ("6h", "90m"), with days ("7d"),
// or as 0 for entries that never expire.
type Duration time.Duration

func (d *Duration) UnmarshalYAML(n *yaml.Node) error {
	if n.Kind != yaml.ScalarNode {
		return fmt.Errorf("line %d: ttl must be a scalar like 24h", n.Line)
	}
	v, err := ParseTTL(n.Value)
	if err != nil {
		return fmt.Errorf("line %d: %w", n.Line, err)
	}
	*d = Duration(v)
	return nil
}

// maxTTL is the longest lifetime: expiry instants are stored as int64
// nanoseconds since 1970, which end in 2262.
const maxTTL = 100 * 365 * 24 * time.Hour

// ParseTTL parses a lifetime: a Go duration, a number of days ("7d"), or "0".
// Any other lifetime is positive and at most 100 years.
func ParseTTL(str string) (time.Duration, error) {
	s := strings.TrimSpace(str)
	if s == "0" {
		return 0, nil
	}
	var d time.Duration
	if days, ok := strings.CutSuffix(s, "d"); ok {
		n, err := strconv.ParseFloat(days, 64)
		// !(n > 0) also rejects NaN, which would convert to a negative duration.
		if err != nil || !(n > 0) || n > 100*365 {
			return 0, fmt.Errorf("bad ttl %q (want e.g. 6h, 90m, 7d)", str)
		}
		d = time.Duration(n * 24 * float64(time.Hour))
	} else {
		var err error
		if d, err = time.ParseDuration(s); err != nil {
			return 0, fmt.Errorf("bad ttl %q (want e.g. 6h, 90m, 7d)", str)
		}
	}
	// A positive lifetime that rounds to 0 would mean "never expires".
	if d <= 0 || d > maxTTL {
		return 0, fmt.Errorf("bad ttl %q (want e.g. 6h, 90m, 7d; at most 100 years)", str)
	}
	return d, nil
}
