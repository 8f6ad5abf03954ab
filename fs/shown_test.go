package fs

import (
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/iriskvfs/iriskvfs/index"
)

// TestShownEntryRoundTrip: a key file shows exactly the entry it was given.
func TestShownEntryRoundTrip(t *testing.T) {
	now := time.Now()
	for _, e := range []index.Entry{
		{Scope: "task", Key: "k"}, // zero times stay zero
		{
			Scope: "task", Key: "k", ContentType: "text/plain", Size: 42, Fingerprint: index.Fingerprint{1, 2, 3},
			CreatedAt: now, ModTime: time.Unix(0, 0), ExpiresAt: now.Add(time.Hour), TTL: time.Hour,
			Mode: 0o640, UID: 7, GID: 8, Flags: index.FlagTTLSet, Meta: map[string]string{"a": "b"},
		},
		{Scope: "task", Key: "k", CreatedAt: index.MinTime, ModTime: index.MaxTime},
	} {
		s := packEntry(&e)
		got := s.entry(e.Scope, e.Key)
		for _, p := range []struct{ got, want time.Time }{{got.CreatedAt, e.CreatedAt}, {got.ModTime, e.ModTime}, {got.ExpiresAt, e.ExpiresAt}} {
			if !p.got.Equal(p.want) || p.got.IsZero() != p.want.IsZero() {
				t.Errorf("time %v came back as %v", p.want, p.got)
			}
		}
		got.CreatedAt, got.ModTime, got.ExpiresAt = e.CreatedAt, e.ModTime, e.ExpiresAt
		if !reflect.DeepEqual(got, e) {
			t.Errorf("entry %+v came back as %+v", e, got)
		}
	}
	if n := unsafe.Sizeof(shownEntry{}); n >= unsafe.Sizeof(index.Entry{}) {
		t.Errorf("shownEntry is %d bytes, no smaller than index.Entry", n)
	}
}
