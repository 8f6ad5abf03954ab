package quota_test

import (
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/quota"
)

// FuzzParseConfig checks that Parse never panics and that every policy it
// returns is usable: valid, distinct scope names, the built-in scopes first
// and in their order, positive quotas and TTLs that are either 0 (never) or
// a positive lifetime of at most 100 years, quotas of at most 1 PiB that
// add up (TotalQuota) without overflowing.
func FuzzParseConfig(f *testing.F) {
	for _, doc := range []string{
		"",
		"scopes:\n  task: {quota: 200MB}\n",
		"scopes:\n  scratch: {quota: 1GB, ttl: 6h}\n",
		"scopes:\n  system: {ttl: 7d}\n  project: {ttl: 0}\n",
		"scopes: {task: {quota: 100B}}\n",
		"scopes:\n  task: {quota: 1MB, size: 2}\n",
		"scopes:\n  Bad: {quota: 1MB, ttl: 1h}\n",
		"scopes:\n  task: {ttl: NaNd}\n",
		"scopes:\n  task: {quota: 1e-9KB}\n",
	} {
		f.Add([]byte(doc))
	}
	builtin := quota.Default().Names()
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := quota.Parse(doc)
		if err != nil {
			if p != nil {
				t.Fatal("policy returned with an error")
			}
			return
		}
		names := p.Names()
		if len(names) < len(builtin) {
			t.Fatalf("built-in scopes lost: %v", names)
		}
		seen := map[string]bool{}
		var total int64
		for i, s := range p.Scopes() {
			if i < len(builtin) && s.Name != builtin[i] {
				t.Fatalf("scope %d is %q, want built-in %q", i, s.Name, builtin[i])
			}
			if s.Name != names[i] {
				t.Fatalf("Scopes and Names disagree at %d: %q vs %q", i, s.Name, names[i])
			}
			if !quota.ValidScopeName(s.Name) {
				t.Fatalf("invalid scope name %q accepted", s.Name)
			}
			if seen[s.Name] {
				t.Fatalf("scope %q listed twice", s.Name)
			}
			seen[s.Name] = true
			if s.Quota <= 0 || s.Quota > quota.MaxQuota {
				t.Fatalf("scope %q has quota %d", s.Name, s.Quota)
			}
			total += s.Quota
			if total < 0 {
				t.Fatalf("the quotas overflow an int64 at scope %q", s.Name)
			}
			if s.TTL < 0 || s.TTL > 100*365*24*time.Hour {
				t.Fatalf("scope %q has ttl %v", s.Name, s.TTL)
			}
			if got, ok := p.Scope(s.Name); !ok || got != s {
				t.Fatalf("Scope(%q) = %+v, %v; Scopes says %+v", s.Name, got, ok, s)
			}
		}
		if p.TotalQuota() != total {
			t.Fatalf("total quota %d, the scopes add up to %d", p.TotalQuota(), total)
		}
	})
}
