package quota_test

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/quota"
)

const mib = 1024 * 1024

func TestDefaultTable(t *testing.T) {
	p := quota.Default()
	want := []quota.Scope{
		{Name: "system", Quota: 10 * mib, TTL: 168 * time.Hour},
		{Name: "instructions", Quota: 5 * mib, TTL: 168 * time.Hour},
		{Name: "project", Quota: 20 * mib, TTL: 72 * time.Hour},
		{Name: "task", Quota: 100 * mib, TTL: 24 * time.Hour},
		{Name: "artifacts", Quota: 200 * mib, TTL: 48 * time.Hour},
	}
	if got := p.Scopes(); !slices.Equal(got, want) {
		t.Fatalf("Default scopes:\n got %+v\nwant %+v", got, want)
	}
	if got := p.Names(); !slices.Equal(got, []string{"system", "instructions", "project", "task", "artifacts"}) {
		t.Fatalf("Names: %v", got)
	}
	if got := p.TotalQuota(); got != 335*mib {
		t.Fatalf("TotalQuota = %d, want %d", got, 335*mib)
	}
	for _, w := range want {
		s, ok := p.Scope(w.Name)
		if !ok || s != w {
			t.Errorf("Scope(%q) = %+v, %v", w.Name, s, ok)
		}
	}
	if _, ok := p.Scope("nope"); ok {
		t.Error("Scope of an unknown name succeeded")
	}
	if s, _ := p.Scope("system"); s.TTLHours() != 168 {
		t.Errorf("TTLHours = %v", s.TTLHours())
	}
	// Names returns a copy: changing it does not change the policy.
	n := p.Names()
	n[0] = "mutated"
	if p.Names()[0] != "system" {
		t.Fatal("Names exposes the policy's own slice")
	}
	// Each call builds a fresh policy.
	if quota.Default() == quota.Default() {
		t.Fatal("Default returns a shared policy")
	}
}

func TestAdmit(t *testing.T) {
	s := quota.Scope{Name: "task", Quota: 100}
	cases := []struct {
		name             string
		used             int64
		oldSize, newSize int64
		want             error
	}{
		{"empty scope, fits", 0, 0, 100, nil},
		{"empty scope, zero bytes", 0, 0, 0, nil},
		{"exactly full", 60, 0, 40, nil},
		{"one byte over", 60, 0, 41, quota.ErrOverQuota},
		{"larger than the whole quota", 0, 0, 101, quota.ErrTooLarge},
		{"larger than the whole quota, full scope", 100, 0, 1000, quota.ErrTooLarge},
		{"replace counts only the difference", 100, 50, 50, nil},
		{"replace with a bigger value that fits", 90, 50, 60, nil},
		{"replace with a bigger value that does not", 90, 50, 61, quota.ErrOverQuota},
		{"replace with a smaller value in an over-full scope", 120, 50, 10, nil},
		{"replace by whole quota", 100, 100, 100, nil},
	}
	for _, c := range cases {
		err := s.Admit(quota.Usage{Bytes: c.used, Keys: 3}, c.oldSize, c.newSize)
		switch {
		case c.want == nil && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("%s: got %v, want %v", c.name, err, c.want)
		case c.want == quota.ErrOverQuota && errors.Is(err, quota.ErrTooLarge),
			c.want == quota.ErrTooLarge && errors.Is(err, quota.ErrOverQuota):
			t.Errorf("%s: %v matches both errors", c.name, err)
		}
		if err != nil && !strings.Contains(err.Error(), "task") {
			t.Errorf("%s: error %q does not name the scope", c.name, err)
		}
	}
}

func TestRoom(t *testing.T) {
	s := quota.Scope{Name: "x", Quota: 100}
	for _, c := range []struct{ used, old, want int64 }{
		{0, 0, 100}, {30, 0, 70}, {30, 30, 100}, {100, 0, 0}, {150, 0, 0}, {150, 60, 10},
	} {
		if got := s.Room(quota.Usage{Bytes: c.used}, c.old); got != c.want {
			t.Errorf("Room(used %d, old %d) = %d, want %d", c.used, c.old, got, c.want)
		}
		// Room and Admit agree at the boundary.
		if r := s.Room(quota.Usage{Bytes: c.used}, c.old); r > 0 {
			if err := s.Admit(quota.Usage{Bytes: c.used}, c.old, r); err != nil {
				t.Errorf("Admit refuses Room's %d bytes: %v", r, err)
			}
			if err := s.Admit(quota.Usage{Bytes: c.used}, c.old, r+1); err == nil {
				t.Errorf("Admit accepts one byte past Room (%d)", r)
			}
		}
	}
}

func TestValidScopeName(t *testing.T) {
	good := []string{"task", "a", "scratch-2", "my_scope", "x" + strings.Repeat("y", 62)}
	bad := []string{"", "Task", "2task", "-x", "_x", "a b", "a.b", "a/b", "x" + strings.Repeat("y", 63), "tâche"}
	for _, n := range good {
		if !quota.ValidScopeName(n) {
			t.Errorf("ValidScopeName(%q) = false", n)
		}
	}
	for _, n := range bad {
		if quota.ValidScopeName(n) {
			t.Errorf("ValidScopeName(%q) = true", n)
		}
	}
}
