package store_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

func TestPutGetRoundTrip(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	e := utPut(t, s, "task", "greeting", "hello, world\n", store.PutOptions{})
	if e.Scope != "task" || e.Key != "greeting" || e.Size != 13 || e.Fingerprint != utFP("hello, world\n") {
		t.Fatalf("Put returned %+v", e)
	}
	if !e.CreatedAt.Equal(utT0) || !e.ModTime.Equal(utT0) || !e.ExpiresAt.Equal(utT0.Add(24*time.Hour)) || e.TTL != 24*time.Hour {
		t.Fatalf("times of a task entry: created %v mod %v expires %v ttl %v", e.CreatedAt, e.ModTime, e.ExpiresAt, e.TTL)
	}
	if e.Mode != 0o644 || e.ContentType != "text/plain; charset=utf-8" || len(e.Meta) != 0 {
		t.Fatalf("defaults: mode %o type %q meta %v", e.Mode, e.ContentType, e.Meta)
	}
	got := utMustGet(t, s, "task", "greeting", "hello, world\n")
	if got.Key != "greeting" || !got.ExpiresAt.Equal(e.ExpiresAt) || got.ContentType != e.ContentType {
		t.Fatalf("Get entry %+v differs from Put's %+v", got, e)
	}
	l, err := s.Lookup("task", "greeting")
	if err != nil || l.Fingerprint != e.Fingerprint {
		t.Fatalf("Lookup: %+v %v", l, err)
	}

	// The value is one plain file holding exactly its bytes, read-only.
	p := s.BlobPath(e.Fingerprint)
	raw, err := os.ReadFile(p)
	if err != nil || string(raw) != "hello, world\n" {
		t.Fatalf("blob file %s: %q %v", p, raw, err)
	}
	fi, _ := os.Stat(p)
	if fi.Mode().Perm() != 0o444 {
		t.Fatalf("blob mode %v", fi.Mode())
	}
	if !strings.HasPrefix(p, s.Dir()+"/blobs/") {
		t.Fatalf("blob outside blobs/: %s", p)
	}
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp/ not empty after a put: %v", tmp)
	}

	// Options are applied.
	clk.Add(time.Minute)
	e = utPut(t, s, "project", "cfg", "{}", store.PutOptions{
		TTL: 6 * time.Hour, ContentType: "application/x-custom", Meta: map[string]string{"author": "agent", "v": "2"},
		Mode: 0o600, UID: 1000, GID: 100,
	})
	got = utMustGet(t, s, "project", "cfg", "{}")
	now := utT0.Add(time.Minute)
	if got.TTL != 6*time.Hour || !got.ExpiresAt.Equal(now.Add(6*time.Hour)) || !got.CreatedAt.Equal(now) ||
		got.ContentType != "application/x-custom" || got.Meta["author"] != "agent" || got.Meta["v"] != "2" ||
		got.Mode != 0o600 || got.UID != 1000 || got.GID != 100 {
		t.Fatalf("options not kept: %+v", got)
	}

	// Empty value.
	utPut(t, s, "task", "empty", "", store.PutOptions{})
	got = utMustGet(t, s, "task", "empty", "")
	if got.ContentType != "application/octet-stream" {
		t.Fatalf("type of an empty value: %q", got.ContentType)
	}

	// Persisted: a reopened store reads the same.
	dir := s.Dir()
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	s2 := utOpenAt(t, dir, store.Options{Now: clk.Now})
	utMustGet(t, s2, "task", "greeting", "hello, world\n")
	got = utMustGet(t, s2, "project", "cfg", "{}")
	if got.Meta["author"] != "agent" || got.Mode != 0o600 {
		t.Fatalf("after reopen: %+v", got)
	}
}

func TestPutLargeValueStreams(t *testing.T) {
	s, _ := utOpen(t, store.Options{HotEntryMax: 64 << 10})
	big := make([]byte, 3<<20+17)
	rand.New(rand.NewSource(1)).Read(big)
	e, err := s.Put("task", "big.bin", bytes.NewReader(big), store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != int64(len(big)) || e.Fingerprint != sha256.Sum256(big) {
		t.Fatalf("entry %d %x", e.Size, e.Fingerprint[:4])
	}
	v, err := s.Open("task", "big.bin")
	if err != nil {
		t.Fatal(err)
	}
	defer v.Close()
	if _, inMem := v.Bytes(); inMem {
		t.Fatal("a value past HotEntryMax is held in memory")
	}
	if v.File() == nil {
		t.Fatal("no file for a large value")
	}
	got, err := io.ReadAll(v.Reader())
	if err != nil || !bytes.Equal(got, big) {
		t.Fatalf("streamed read: %d bytes, %v", len(got), err)
	}
	buf := make([]byte, 10)
	if n, err := v.ReadAt(buf, int64(len(big))-5); n != 5 || !bytes.Equal(buf[:5], big[len(big)-5:]) || err != io.EOF {
		t.Fatalf("ReadAt at the end: %d %v", n, err)
	}
	b, _, err := s.Get("task", "big.bin")
	if err != nil || !bytes.Equal(b, big) {
		t.Fatalf("Get of a large value: %v", err)
	}
}

func TestOverwrite(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "first value", store.PutOptions{Meta: map[string]string{"a": "1"}})
	clk.Add(time.Hour)
	e := utPut(t, s, "task", "k", "second", store.PutOptions{})
	utMustGet(t, s, "task", "k", "second")
	if len(e.Meta) != 0 || !e.CreatedAt.Equal(utT0.Add(time.Hour)) {
		t.Fatalf("overwrite without Inherit kept old attributes or time: %+v", e)
	}
	if u, _ := s.ScopeUsage("task"); u.Bytes != 6 || u.Keys != 1 {
		t.Fatalf("usage after overwrite: %+v", u)
	}
	if _, err := os.Stat(s.BlobPath(utFP("first value"))); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("blob of the replaced value still there: %v", err)
	}
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("blob files after overwrite: %v", files)
	}
	// Overwriting with the same bytes keeps the blob.
	utPut(t, s, "task", "k", "second", store.PutOptions{})
	utMustGet(t, s, "task", "k", "second")
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("blob files after same-value overwrite: %v", files)
	}
	utFsckClean(t, s)
}

func TestContentTypeGuessing(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	png := "\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR"
	cases := []struct {
		key, value, explicit, wantPrefix string
	}{
		{"notes.md", "# hi", "", "text/markdown; charset=utf-8"},
		{"README.markdown", "# hi", "", "text/markdown; charset=utf-8"},
		{"data.json", `{"a":1}`, "", "application/json"},
		{"page.html", "<p>x</p>", "", "text/html"},
		{"image.png", "not really a png", "", "image/png"}, // the extension wins
		{"plain", "just some text\n", "", "text/plain; charset=utf-8"},
		{"sniffed-html", "<!DOCTYPE html><html></html>", "", "text/html; charset=utf-8"},
		{"sniffed-png", png, "", "image/png"},
		{"binary", "\x00\x01\x02\x03\xfe\xff", "", "application/octet-stream"},
		{"empty", "", "", "application/octet-stream"},
		{"unknown.zzqqxx", "text after all", "", "text/plain; charset=utf-8"},
		{"forced.md", "# hi", "text/x-mine", "text/x-mine"},
	}
	for _, c := range cases {
		e := utPut(t, s, "task", c.key, c.value, store.PutOptions{ContentType: c.explicit})
		if !strings.HasPrefix(e.ContentType, c.wantPrefix) {
			t.Errorf("%s: content type %q, want %q", c.key, e.ContentType, c.wantPrefix)
		}
		got, _ := s.Lookup("task", c.key)
		if got.ContentType != e.ContentType {
			t.Errorf("%s: stored type %q, put returned %q", c.key, got.ContentType, e.ContentType)
		}
	}
}

func TestPutRejectsBadInput(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	cases := []struct {
		scope, key string
		opts       store.PutOptions
		want       error
	}{
		{"nosuch", "k", store.PutOptions{}, store.ErrBadScope},
		{"", "k", store.PutOptions{}, store.ErrBadScope},
		{"task", "", store.PutOptions{}, store.ErrBadKey},
		{"task", "a/b", store.PutOptions{}, store.ErrBadKey},
		{"task", ".stats", store.PutOptions{}, store.ErrReservedKey},
		{"task", "_index.json", store.PutOptions{}, store.ErrReservedKey},
		{"task", strings.Repeat("k", 256), store.PutOptions{}, store.ErrNameTooLong},
		{"task", "k", store.PutOptions{TTL: -time.Second}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{TTL: 101 * 365 * 24 * time.Hour}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{ContentType: "text/plain\n"}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{ContentType: strings.Repeat("t", 256)}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{Meta: map[string]string{"bad name": "v"}}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{Meta: map[string]string{"": "v"}}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{Meta: map[string]string{"n": strings.Repeat("v", 64<<10+1)}}, store.ErrBadArgument},
		{"task", "k", store.PutOptions{Mode: 0o10000}, store.ErrBadArgument},
	}
	for _, c := range cases {
		_, err := s.Put(c.scope, c.key, strings.NewReader("v"), c.opts)
		if !errors.Is(err, c.want) {
			t.Errorf("Put %q/%q %+v: %v, want %v", c.scope, utShort([]byte(c.key)), c.opts.TTL, err, c.want)
		}
		var oe *store.OpError
		if err != nil && !errors.As(err, &oe) {
			t.Errorf("Put %q/%q: error %T is not an *OpError", c.scope, c.key, err)
		}
	}
	if files := utBlobFiles(t, s); len(files) != 0 {
		t.Fatalf("rejected puts left blobs: %v", files)
	}
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("rejected puts left tmp files: %v", tmp)
	}
	_, _, err := s.Get("task", "never-written")
	utMustFail(t, err, store.ErrNotFound, "Get of a missing key")
	if !strings.Contains(err.Error(), "task/never-written") {
		t.Fatalf("error %q does not name scope/key", err)
	}
	_, _, err = s.Get("nosuch", "k")
	utMustFail(t, err, store.ErrBadScope, "Get in a missing scope")
	if !strings.Contains(err.Error(), "task") || !strings.Contains(err.Error(), "system") {
		t.Fatalf("bad-scope error %q does not list the scopes", err)
	}
}

// A reader that fails part-way must not publish anything.
func TestPutReaderErrorAborts(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "old", store.PutOptions{})
	boom := errors.New("boom")
	_, err := s.Put("task", "k", io.MultiReader(strings.NewReader("partial new"), &utErrReader{boom}), store.PutOptions{})
	if !errors.Is(err, boom) {
		t.Fatalf("Put with a failing reader: %v", err)
	}
	utMustGet(t, s, "task", "k", "old")
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files left: %v", tmp)
	}
	utFsckClean(t, s)
}

type utErrReader struct{ err error }

func (r *utErrReader) Read([]byte) (int, error) { return 0, r.err }

func TestWriterRandomWritesAndTruncate(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	rng := rand.New(rand.NewSource(42))
	for round := 0; round < 20; round++ {
		w, err := s.NewWriter("artifacts", "rand", store.PutOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var want []byte
		for op := 0; op < 30; op++ {
			switch rng.Intn(4) {
			case 0, 1: // write at a random offset, possibly past the end (a hole)
				off := rng.Intn(len(want) + 200)
				p := make([]byte, rng.Intn(300))
				rng.Read(p)
				if n, err := w.WriteAt(p, int64(off)); err != nil || n != len(p) {
					t.Fatalf("WriteAt: %d %v", n, err)
				}
				if len(p) == 0 {
					break // an empty write extends nothing
				}
				if end := off + len(p); end > len(want) {
					want = append(want, make([]byte, end-len(want))...)
				}
				copy(want[off:], p)
			case 2: // append
				p := []byte(strings.Repeat(string(rune('a'+op%26)), rng.Intn(50)))
				if _, err := w.Write(p); err != nil {
					t.Fatal(err)
				}
				want = append(want, p...)
			case 3: // truncate shorter or longer
				size := rng.Intn(len(want) + 100)
				if err := w.Truncate(int64(size)); err != nil {
					t.Fatal(err)
				}
				if size <= len(want) {
					want = want[:size]
				} else {
					want = append(want, make([]byte, size-len(want))...)
				}
			}
			if w.Size() != int64(len(want)) {
				t.Fatalf("round %d op %d: Size %d, want %d", round, op, w.Size(), len(want))
			}
		}
		// The staged bytes read back before commit.
		staged := make([]byte, len(want)+10)
		n, err := w.ReadAt(staged, 0)
		if n != len(want) || !bytes.Equal(staged[:n], want) || (err != io.EOF && err != nil) {
			t.Fatalf("round %d: ReadAt of staged value: %d %v", round, n, err)
		}
		e, err := w.Commit()
		if err != nil {
			t.Fatal(err)
		}
		if e.Size != int64(len(want)) || e.Fingerprint != sha256.Sum256(want) {
			t.Fatalf("round %d: entry size %d fp %x, want %d %x", round, e.Size, e.Fingerprint[:4], len(want), sha256.Sum256(want))
		}
		got, _, err := s.Get("artifacts", "rand")
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("round %d: Get: %v (len %d want %d)", round, err, len(got), len(want))
		}
	}
	utFsckClean(t, s)
}

func TestWriterSequentialThenTruncateToSameSize(t *testing.T) {
	// Truncating to the current size keeps the streaming hash valid; the
	// fingerprint must still be that of the bytes.
	s, _ := utOpen(t, store.Options{})
	w, err := s.NewWriter("task", "k", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abcdef"))
	if err := w.Truncate(6); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("gh"))
	if err := w.Truncate(3); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("XYZ"))
	e, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if e.Fingerprint != utFP("abcXYZ") {
		t.Fatalf("fingerprint %x is not that of %q", e.Fingerprint[:4], "abcXYZ")
	}
	utMustGet(t, s, "task", "k", "abcXYZ")
}

func TestWriterLifecycle(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "old", store.PutOptions{})
	w, err := s.NewWriter("task", "k", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("new"))
	// Nothing is visible before Commit. A small value is staged in memory.
	utMustGet(t, s, "task", "k", "old")
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files of a writer of 3 bytes: %v", tmp)
	}
	// A large one moves to a temporary file, which fsck leaves alone.
	w.Write(bytes.Repeat([]byte("n"), index.JournalMaxAttach))
	utMustGet(t, s, "task", "k", "old")
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 1 {
		t.Fatalf("tmp files of an open writer: %v", tmp)
	}
	utFsckClean(t, s)
	w.Abort()
	w.Abort() // idempotent
	utMustGet(t, s, "task", "k", "old")
	if tmp := utTmpFiles(t, s.Dir()); len(tmp) != 0 {
		t.Fatalf("tmp files after Abort: %v", tmp)
	}
	if _, err := w.Write([]byte("x")); err == nil {
		t.Fatal("Write after Abort succeeded")
	}
	if _, err := w.Commit(); err == nil {
		t.Fatal("Commit after Abort succeeded")
	}
	utMustGet(t, s, "task", "k", "old")

	w, _ = s.NewWriter("task", "k", store.PutOptions{})
	w.Write([]byte("committed"))
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err == nil {
		t.Fatal("second Commit succeeded")
	}
	if err := w.Truncate(0); err == nil {
		t.Fatal("Truncate after Commit succeeded")
	}
	if _, err := w.WriteAt([]byte("x"), -1); err == nil {
		t.Fatal("WriteAt after Commit succeeded")
	}
	utMustGet(t, s, "task", "k", "committed")

	w, _ = s.NewWriter("task", "k2", store.PutOptions{})
	defer w.Abort()
	if _, err := w.WriteAt([]byte("x"), -1); !errors.Is(err, store.ErrBadArgument) {
		t.Fatalf("WriteAt at a negative offset: %v", err)
	}
	if err := w.Truncate(-1); !errors.Is(err, store.ErrBadArgument) {
		t.Fatalf("Truncate to a negative size: %v", err)
	}
}

func TestPutBaseCopiesOldValue(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	utPut(t, s, "task", "doc", "hello world", store.PutOptions{})
	w, err := s.NewWriter("task", "doc", store.PutOptions{Base: true})
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != 11 {
		t.Fatalf("Base writer starts at %d bytes", w.Size())
	}
	if _, err := w.WriteAt([]byte("HELLO"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("!")); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	utMustGet(t, s, "task", "doc", "HELLO world!")

	// Base of a missing key starts empty.
	w, err = s.NewWriter("task", "fresh", store.PutOptions{Base: true})
	if err != nil {
		t.Fatal(err)
	}
	if w.Size() != 0 {
		t.Fatalf("Base of a missing key starts at %d bytes", w.Size())
	}
	w.Write([]byte("x"))
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	utMustGet(t, s, "task", "fresh", "x")

	// Base of a large (not in memory) value.
	big := bytes.Repeat([]byte("0123456789"), 300<<10/10)
	s2, _ := utOpen(t, store.Options{HotEntryMax: 1024})
	if _, err := s2.Put("task", "big", bytes.NewReader(big), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	w, err = s2.NewWriter("task", "big", store.PutOptions{Base: true})
	if err != nil {
		t.Fatal(err)
	}
	w.Truncate(int64(len(big) - 5))
	w.Write([]byte("END"))
	if _, err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	want := append(bytes.Clone(big[:len(big)-5]), "END"...)
	if got, _, err := s2.Get("task", "big"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Base of a large value: %v", err)
	}
}

func TestPutInherit(t *testing.T) {
	s, clk := utOpen(t, store.Options{})
	utPut(t, s, "task", "k", "v1", store.PutOptions{
		TTL: 6 * time.Hour, ContentType: "text/x-custom", Meta: map[string]string{"a": "1"}, Mode: 0o600, UID: 7, GID: 8,
	})
	clk.Add(time.Hour)
	e := utPut(t, s, "task", "k", "v2", store.PutOptions{Inherit: true})
	now := utT0.Add(time.Hour)
	if e.ContentType != "text/x-custom" || e.Meta["a"] != "1" || len(e.Meta) != 1 || e.Mode != 0o600 ||
		e.UID != 7 || e.GID != 8 || e.TTL != 6*time.Hour || !e.ExpiresAt.Equal(now.Add(6*time.Hour)) || !e.CreatedAt.Equal(now) {
		t.Fatalf("Inherit did not keep the attributes: %+v", e)
	}
	// Options given explicitly win over inherited ones.
	e = utPut(t, s, "task", "k", "v3", store.PutOptions{Inherit: true, ContentType: "text/plain", Mode: 0o640, Meta: map[string]string{"b": "2"}})
	if e.ContentType != "text/plain" || e.Mode != 0o640 || e.Meta["b"] != "2" || e.Meta["a"] != "" || e.TTL != 6*time.Hour {
		t.Fatalf("explicit options with Inherit: %+v", e)
	}
	// Without Inherit the defaults return.
	e = utPut(t, s, "task", "k", "v4", store.PutOptions{})
	if e.ContentType != "text/plain; charset=utf-8" || len(e.Meta) != 0 || e.Mode != 0o644 || e.UID != 0 || e.TTL != 24*time.Hour {
		t.Fatalf("put without Inherit: %+v", e)
	}
	// Inherit of a missing key gives the defaults.
	e = utPut(t, s, "task", "new", "v", store.PutOptions{Inherit: true})
	if e.Mode != 0o644 || e.TTL != 24*time.Hour {
		t.Fatalf("Inherit of a new key: %+v", e)
	}
	// The put's meta map is copied, not aliased.
	meta := map[string]string{"x": "1"}
	utPut(t, s, "task", "m", "v", store.PutOptions{Meta: meta})
	meta["x"] = "changed"
	if got, _ := s.Lookup("task", "m"); got.Meta["x"] != "1" {
		t.Fatalf("stored meta aliased the caller's map: %v", got.Meta)
	}
}

func TestDedupSharesBlob(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	const v = "the same bytes in two places"
	utPut(t, s, "task", "a", v, store.PutOptions{})
	utPut(t, s, "artifacts", "b", v, store.PutOptions{})
	files := utBlobFiles(t, s)
	fp := utFP(v)
	want := "blobs/" + s.BlobPath(fp)[len(s.Dir())+len("/blobs/"):]
	if !slices.Equal(files, []string{want}) {
		t.Fatalf("blob files %v, want just %s", files, want)
	}
	if dir := strings.Split(want, "/")[1]; len(dir) != 2 || dir != strings.Split(want, "/")[2][:2] {
		t.Fatalf("blob %s is not under blobs/xx/ by its first byte", want)
	}
	if err := s.Delete("task", "a"); err != nil {
		t.Fatal(err)
	}
	utMustGet(t, s, "artifacts", "b", v)
	if files := utBlobFiles(t, s); len(files) != 1 {
		t.Fatalf("deleting one of two keys removed the shared blob: %v", files)
	}
	if err := s.Delete("artifacts", "b"); err != nil {
		t.Fatal(err)
	}
	if files := utBlobFiles(t, s); len(files) != 0 {
		t.Fatalf("deleting both keys left %v", files)
	}
	utFsckClean(t, s)
}

// A zero-length write changes nothing, wherever it lands (as pwrite of 0
// bytes does not extend a file).
func TestWriterEmptyWritePastEnd(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	w, err := s.NewWriter("task", "k", store.PutOptions{})
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("abc"))
	if n, err := w.WriteAt(nil, 100); n != 0 || err != nil {
		t.Fatalf("empty WriteAt: %d %v", n, err)
	}
	if n, err := w.WriteAt([]byte{}, 3); n != 0 || err != nil {
		t.Fatalf("empty WriteAt at the end: %d %v", n, err)
	}
	if w.Size() != 3 {
		t.Fatalf("an empty write moved the size to %d", w.Size())
	}
	e, err := w.Commit()
	if err != nil {
		t.Fatal(err)
	}
	if e.Size != 3 || e.Fingerprint != utFP("abc") {
		t.Fatalf("entry %d bytes %x", e.Size, e.Fingerprint[:4])
	}
	utMustGet(t, s, "task", "k", "abc")
	utFsckClean(t, s)
}
