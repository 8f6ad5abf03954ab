package fs

import (
	"reflect"
	"testing"
	"time"
	"unsafe"

	"github.com/iriskvfs/iriskvfs/index"
)

// TestShownEntryRoundTrip: a key file shows exactly the entry it was given:
// its attributes (index.Attrs) and, where it keeps them, its metadata.
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
		a, m := e.Attrs(), metaOf(&e)
		got := a.Entry(e.Scope, e.Key)
		m.setIn(&got)
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
}

// TestKeyFileSize pins the memory of a name the kernel knows: the kernel
// may hold a key file for every key of a scope (a listing of 100,000 keys
// makes 100,000), and each is one allocation of keyFile's size class. At
// 256 bytes (go-fuse's Inode is 128 of them) 100k names take 25.6 MB of
// key files; before the rare state moved to keyExtra they took 38.4 MB.
func TestKeyFileSize(t *testing.T) {
	if n := unsafe.Sizeof(keyFile{}); n > 256 {
		t.Errorf("keyFile is %d bytes, over 256 (move what few files need to keyExtra)", n)
	}
	if n := unsafe.Sizeof(index.Attrs{}); n > 80 {
		t.Errorf("index.Attrs is %d bytes, over 80", n)
	}
}
