package store_test

import (
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// TestInheritKeepsNeverExpires: a key whose TTL was set to 0 (never
// expires; setfattr user.iris.ttl 0) keeps it when rewritten with Inherit
// (a file rewritten through the mount keeps its attributes). It used to get
// the scope's TTL back, and so to expire. Found by fs.TestModel.
func TestInheritKeepsNeverExpires(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "v1", store.PutOptions{})
	if _, err := s.UpdateMeta("task", "k", func(e *index.Entry) error { e.TTL = 0; return nil }); err != nil {
		t.Fatal(err)
	}
	e := utPut(t, s, "task", "k", "v2", store.PutOptions{Inherit: true})
	if e.TTL != 0 || !e.ExpiresAt.IsZero() {
		t.Fatalf("rewritten with Inherit: ttl %v, expires %v; want 0 (never)", e.TTL, e.ExpiresAt)
	}
	clk.Add(30 * 24 * time.Hour)
	utMustGet(t, s, "task", "k", "v2")
	// A put without Inherit still gets the scope's TTL.
	if e := utPut(t, s, "task", "k", "v3", store.PutOptions{}); e.TTL != 24*time.Hour {
		t.Fatalf("put without Inherit: ttl %v, want the scope's 24h", e.TTL)
	}
}

// TestInheritSkipsExpiredEntry: a key written again after it expired (and
// before a prune removed it) starts afresh: it does not inherit the dead
// entry's per-key TTL, content type or metadata. It used to, and a key given
// a short TTL expired again right after being recreated. Found by
// fs.TestModel.
func TestInheritSkipsExpiredEntry(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "v1", store.PutOptions{TTL: time.Second, ContentType: "text/x-old", Meta: map[string]string{"a": "1"}})
	clk.Add(2 * time.Second)
	e := utPut(t, s, "task", "k", "v2", store.PutOptions{Inherit: true})
	if e.TTL != 24*time.Hour || e.ContentType == "text/x-old" || len(e.Meta) != 0 {
		t.Fatalf("recreated after expiry: ttl %v, content type %q, meta %v; want the scope's TTL and fresh attributes", e.TTL, e.ContentType, e.Meta)
	}
	clk.Add(time.Hour)
	utMustGet(t, s, "task", "k", "v2")
	// A live entry is still inherited from.
	e = utPut(t, s, "task", "k", "v3", store.PutOptions{Inherit: true, TTL: 2 * time.Hour, ContentType: "text/x-new"})
	clk.Add(time.Minute)
	e = utPut(t, s, "task", "k", "v4", store.PutOptions{Inherit: true})
	if e.TTL != 2*time.Hour || e.ContentType != "text/x-new" {
		t.Fatalf("rewritten while live: ttl %v, content type %q; want them inherited", e.TTL, e.ContentType)
	}
}
