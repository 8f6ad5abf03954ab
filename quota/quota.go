// Package quota owns scope policy: which scopes exist, how many bytes each may
// hold and how long its entries live, where that policy comes from (the
// built-in table or a config file), and the admission decision for a write.
package quota

import (
	"errors"
	"fmt"
	"math"
	"regexp"
	"sort"
	"time"
)

// Admission errors. The store wraps them with the scope and key; the mount
// maps ErrOverQuota to EDQUOT and ErrTooLarge to EFBIG.
var (
	ErrOverQuota = errors.New("scope quota exceeded")
	ErrTooLarge  = errors.New("value larger than the scope's whole quota")
)

// Scope is the policy of one scope.
type Scope struct {
	Name  string
	Quota int64         // bytes; the sum of the sizes of the scope's live entries may not exceed it
	TTL   time.Duration // default lifetime of an entry; 0 means entries never expire
}

// TTLHours is the TTL in the unit the seed's index format uses.
func (s Scope) TTLHours() float64 { return s.TTL.Hours() }

// Usage is what a scope currently holds.
type Usage struct {
	Bytes int64
	Keys  int64
}

// Admit decides whether a scope holding u may replace a value of oldSize
// bytes (0 for a new key) with one of newSize bytes.
func (s Scope) Admit(u Usage, oldSize, newSize int64) error {
	if newSize > s.Quota {
		return fmt.Errorf("%w: %d bytes, quota of %s is %d bytes", ErrTooLarge, newSize, s.Name, s.Quota)
	}
	if after := u.Bytes - oldSize + newSize; after > s.Quota {
		return fmt.Errorf("%w: %s would hold %d of %d bytes", ErrOverQuota, s.Name, after, s.Quota)
	}
	return nil
}

// Room is how many bytes a value replacing one of oldSize bytes may have.
func (s Scope) Room(u Usage, oldSize int64) int64 {
	r := s.Quota - u.Bytes + oldSize
	if r < 0 {
		return 0
	}
	return r
}

var scopeNameRE = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,62}$`)

// ValidScopeName reports whether name may be used as a scope. Scope names
// become directory names and index bucket names, so they are kept simple.
func ValidScopeName(name string) bool { return scopeNameRE.MatchString(name) }

// Policy is the set of scopes. It is immutable once built.
type Policy struct {
	scopes map[string]Scope
	order  []string
}

const (
	kb = 1 << 10
	mb = 1 << 20
)

// defaults is the seed's scope table.
var defaults = []Scope{
	{Name: "system", Quota: 10 * mb, TTL: 168 * time.Hour},
	{Name: "instructions", Quota: 5 * mb, TTL: 168 * time.Hour},
	{Name: "project", Quota: 20 * mb, TTL: 72 * time.Hour},
	{Name: "task", Quota: 100 * mb, TTL: 24 * time.Hour},
	{Name: "artifacts", Quota: 200 * mb, TTL: 48 * time.Hour},
}

// Default returns the seed's policy.
func Default() *Policy { return newPolicy(defaults) }

func newPolicy(scopes []Scope) *Policy {
	p := &Policy{scopes: make(map[string]Scope, len(scopes))}
	for _, s := range scopes {
		if _, dup := p.scopes[s.Name]; !dup {
			p.order = append(p.order, s.Name)
		}
		p.scopes[s.Name] = s
	}
	return p
}

// Scope returns the policy of the named scope.
func (p *Policy) Scope(name string) (Scope, bool) {
	s, ok := p.scopes[name]
	return s, ok
}

// Scopes lists the scopes: the built-in ones in the seed's order, then the
// configured additions in name order.
func (p *Policy) Scopes() []Scope {
	out := make([]Scope, 0, len(p.order))
	for _, n := range p.order {
		out = append(out, p.scopes[n])
	}
	return out
}

// Names lists the scope names in the order of Scopes.
func (p *Policy) Names() []string { return append([]string(nil), p.order...) }

// TotalQuota is the sum of all scope quotas (Parse refuses a policy whose
// sum would not fit an int64; it saturates, should one be built otherwise).
func (p *Policy) TotalQuota() int64 {
	var t int64
	for _, s := range p.scopes {
		if t > math.MaxInt64-s.Quota {
			return math.MaxInt64
		}
		t += s.Quota
	}
	return t
}

// with returns a copy of p with the given scopes changed or added.
func (p *Policy) with(changes map[string]Scope) *Policy {
	base := p.Scopes()
	for i, s := range base {
		if c, ok := changes[s.Name]; ok {
			base[i] = c
			delete(changes, s.Name)
		}
	}
	added := make([]string, 0, len(changes))
	for n := range changes {
		added = append(added, n)
	}
	sort.Strings(added)
	for _, n := range added {
		base = append(base, changes[n])
	}
	return newPolicy(base)
}
