package store_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

// utDamageIndex rewrites the closed store's index.db through fn.
func utDamageIndex(t *testing.T, dir string, fn func(b []byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, "index.db")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, fn(b), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestOpenRefusesDamagedIndex: an index cut short, emptied, deleted or with
// unreadable meta pages stops Open with one message that names the file and
// the repair, never a panic; no value file is swept as an orphan, and the
// failed open leaves the store unlocked.
func TestOpenRefusesDamagedIndex(t *testing.T) {
	cases := []struct {
		name   string
		damage func(dir string)
	}{
		{"truncated", func(dir string) { utDamageIndex(t, dir, func(b []byte) []byte { return b[:len(b)/2] }) }},
		{"cut to one page", func(dir string) { utDamageIndex(t, dir, func(b []byte) []byte { return b[:4096] }) }},
		{"empty", func(dir string) { utDamageIndex(t, dir, func([]byte) []byte { return nil }) }},
		{"deleted", func(dir string) { os.Remove(filepath.Join(dir, "index.db")) }},
		{"meta pages overwritten", func(dir string) {
			utDamageIndex(t, dir, func(b []byte) []byte {
				for i := 0; i < 8192; i++ {
					b[i] = byte(i)
				}
				return b
			})
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			s := utOpenAt(t, dir, store.Options{})
			for i := 0; i < 300; i++ {
				utPut(t, s, "task", fmt.Sprintf("k%03d", i), fmt.Sprint("value ", i), store.PutOptions{})
			}
			blobs := utBlobFiles(t, s)
			s.Close()
			c.damage(dir)
			for try := 0; try < 2; try++ { // the second: the first let go of the lock
				_, err := store.Open(dir, store.Options{})
				if !errors.Is(err, store.ErrIndexDamaged) {
					t.Fatalf("Open: %v, want ErrIndexDamaged", err)
				}
				msg := err.Error()
				if !strings.Contains(msg, filepath.Join(dir, "index.db")) || !strings.Contains(msg, "iriskvfs fsck --repair") || strings.Contains(msg, "\n") {
					t.Errorf("Open: %q: want one line naming the index file and 'iriskvfs fsck --repair'", msg)
				}
			}
			if got := utBlobFilesIn(t, dir); len(got) != len(blobs) {
				t.Errorf("%d value files left of %d", len(got), len(blobs))
			}
		})
	}
	// A new store (or one whose first index never got written) has no
	// value files: a missing or empty index is just created.
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "index.db"), nil, 0o600)
	utOpenAt(t, dir, store.Options{})
}

func utBlobFilesIn(t *testing.T, dir string) []string {
	t.Helper()
	m, err := filepath.Glob(filepath.Join(dir, "blobs", "*", "*"))
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestBlobOrigin: every value file records the scope, key and content type
// it was written under (user.iris.origin), for RebuildIndex.
func TestBlobOrigin(t *testing.T) {
	s, _ := utOpen(t, store.Options{})
	e := utPut(t, s, "project", "notes.md", "# notes", store.PutOptions{})
	buf := make([]byte, 1024)
	n, err := unix.Getxattr(s.BlobPath(e.Fingerprint), "user.iris.origin", buf)
	if errors.Is(err, unix.ENOTSUP) {
		t.Skip("no user xattrs here")
	}
	if err != nil {
		t.Fatal(err)
	}
	var o map[string]string
	if err := json.Unmarshal(buf[:n], &o); err != nil {
		t.Fatalf("origin %q: %v", buf[:n], err)
	}
	if o["scope"] != "project" || o["key"] != "notes.md" || o["content_type"] != "text/markdown; charset=utf-8" {
		t.Errorf("origin %v", o)
	}
}

// utLeavesWith finds the leaf pages of the index holding marker and not
// avoid.
func utLeavesWith(b []byte, marker, avoid string) []int {
	var out []int
	for p := 2; p < len(b)/4096; p++ {
		pg := b[p*4096 : (p+1)*4096]
		if binary.LittleEndian.Uint16(pg[8:]) == 0x02 && bytes.Contains(pg, []byte(marker)) && !bytes.Contains(pg, []byte(avoid)) {
			out = append(out, p)
		}
	}
	return out
}

// TestRebuildIndexPartial: a leaf page of the task bucket destroyed. The
// rebuild keeps every readable record (with its metadata), gives the keys
// of the lost page back from their value files' origins, names the one key
// whose record and value are both gone, moves the damaged file aside, and
// leaves a store that opens and checks clean.
func TestRebuildIndexPartial(t *testing.T) {
	const n = 400
	dir := t.TempDir()
	clk := utNewClock()
	s := utOpenAt(t, dir, store.Options{Now: clk.Now})
	for i := 0; i < n; i++ {
		utPut(t, s, "task", fmt.Sprintf("k%04d", i), fmt.Sprint("task value ", i), store.PutOptions{Meta: map[string]string{"i": fmt.Sprint(i)}})
	}
	utPut(t, s, "project", "p", "project value", store.PutOptions{ContentType: "text/x-custom"})
	victim := utPut(t, s, "task", "k0200", "the victim's value", store.PutOptions{})
	s.Close()
	var pages []int
	utDamageIndex(t, dir, func(b []byte) []byte {
		// Every leaf page holding the key, the live one and stale copies
		// (bbolt copies on write): destroying a free page does nothing.
		pages = utLeavesWith(b, "k0200", "task\x00k0200")
		if len(pages) == 0 {
			t.Fatal("no leaf page holds task/k0200")
		}
		for _, p := range pages {
			for i := p * 4096; i < (p+1)*4096; i++ {
				b[i] = 0xee
			}
		}
		return b
	})
	// The victim's value is gone too: it cannot come back.
	if err := os.Remove(filepath.Join(dir, "blobs", hex.EncodeToString(victim.Fingerprint[:1]), hex.EncodeToString(victim.Fingerprint[:]))); err != nil {
		t.Fatal(err)
	}
	s, err := store.Open(dir, store.Options{Now: clk.Now})
	if err == nil {
		// Damage Open does not read: fsck, which reads everything, finds it.
		_, err = s.Fsck(false)
		s.Close()
	}
	if !errors.Is(err, store.ErrIndexDamaged) {
		t.Fatalf("damaged leaf pages %v: %v, want ErrIndexDamaged", pages, err)
	}
	rep, err := store.RebuildIndex(dir, store.Options{Now: clk.Now}, err)
	if err != nil {
		t.Fatalf("RebuildIndex: %v", err)
	}
	if len(rep.Lost) != 1 || !strings.HasPrefix(rep.Lost[0], "task/k0200: ") {
		t.Errorf("lost %q, want just task/k0200", rep.Lost)
	}
	adopted := 0
	for _, r := range rep.Repairs {
		if strings.HasPrefix(r, "adopted task/k") {
			adopted++
		}
	}
	if adopted == 0 || adopted > 100 {
		t.Errorf("%d keys adopted from their value files, want those of one page: %q", adopted, rep.Repairs)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "index.db.corrupt-*")); len(m) != 1 {
		t.Errorf("damaged index kept as %q", m)
	}
	s = utOpenAt(t, dir, store.Options{Now: clk.Now})
	utFsckClean(t, s)
	for i := 0; i < n; i++ {
		k := fmt.Sprintf("k%04d", i)
		if k == "k0200" {
			if _, err := s.Lookup("task", k); !errors.Is(err, store.ErrNotFound) {
				t.Errorf("task/k0200: %v", err)
			}
			continue
		}
		utMustGet(t, s, "task", k, fmt.Sprint("task value ", i))
	}
	e := utMustGet(t, s, "project", "p", "project value")
	if e.ContentType != "text/x-custom" {
		t.Errorf("project/p content type %q", e.ContentType)
	}
	kept := 0
	for i := 0; i < n; i++ {
		if e, _ := s.Lookup("task", fmt.Sprintf("k%04d", i)); e.Meta["i"] == fmt.Sprint(i) {
			kept++
		}
	}
	if kept < n-100 {
		t.Errorf("only %d entries kept their metadata", kept)
	}
}

// TestRebuildIndexLost: the index file gone entirely. Every value file
// comes back under the name its origin records (a renamed key under its
// first name); a value file without one as artifacts/recovered-<sha12>; one
// that fits no quota goes to quarantine and is reported lost. Nothing is
// deleted.
func TestRebuildIndexLost(t *testing.T) {
	dir := t.TempDir()
	p := utPolicy(t, "scopes:\n  artifacts: {quota: 64B}\n")
	clk := utNewClock()
	s := utOpenAt(t, dir, store.Options{Policy: p, Now: clk.Now})
	utPut(t, s, "task", "a", "value a", store.PutOptions{})
	utPut(t, s, "instructions", "b.md", "# value b", store.PutOptions{})
	utPut(t, s, "project", "first", "renamed value", store.PutOptions{})
	if err := s.Rename("project", "first", "second"); err != nil {
		t.Fatal(err)
	}
	s.Close()
	// Two value files nobody named: one fits artifacts' 64 bytes, one not.
	small, big := []byte("no name, small"), bytes.Repeat([]byte("L"), 100)
	for _, v := range [][]byte{small, big} {
		h := sha256.Sum256(v)
		hx := hex.EncodeToString(h[:])
		if err := os.WriteFile(filepath.Join(dir, "blobs", hx[:2], hx), v, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	os.Remove(filepath.Join(dir, "index.db"))
	_, err := store.Open(dir, store.Options{Policy: p})
	if !errors.Is(err, store.ErrIndexDamaged) {
		t.Fatalf("Open without an index: %v", err)
	}
	rep, err := store.RebuildIndex(dir, store.Options{Policy: p, Now: clk.Now}, err)
	if err != nil {
		t.Fatal(err)
	}
	s = utOpenAt(t, dir, store.Options{Policy: p, Now: clk.Now})
	utFsckClean(t, s)
	utMustGet(t, s, "task", "a", "value a")
	if e := utMustGet(t, s, "instructions", "b.md", "# value b"); e.ContentType != "text/markdown; charset=utf-8" {
		t.Errorf("b.md content type %q", e.ContentType)
	}
	utMustGet(t, s, "project", "first", "renamed value")
	hs := sha256.Sum256(small)
	utMustGet(t, s, "artifacts", "recovered-"+hex.EncodeToString(hs[:])[:12], string(small))
	hb := sha256.Sum256(big)
	q, _ := filepath.Glob(filepath.Join(dir, "quarantine", hex.EncodeToString(hb[:])+".unadopted-*"))
	if len(q) != 1 {
		t.Errorf("the value that fits nowhere is not in quarantine: %q", q)
	}
	if len(rep.Lost) != 1 || !strings.Contains(rep.Lost[0], "no scope has room") {
		t.Errorf("lost %q", rep.Lost)
	}
	if len(rep.Problems) == 0 || rep.Problems[0].Kind != store.ProblemIndexDamaged {
		t.Errorf("problems %v", rep.Problems)
	}
}

// TestSweepWaitsForSoundIndex: damage deep in the index, which Open's
// checks do not reach, stops the background orphan sweep (which would
// delete every value file whose references it cannot read) and is logged;
// fsck reports it.
func TestSweepWaitsForSoundIndex(t *testing.T) {
	dir := t.TempDir()
	s := utOpenAt(t, dir, store.Options{})
	for i := 0; i < 400; i++ {
		utPut(t, s, "task", fmt.Sprintf("k%04d", i), fmt.Sprint("task value ", i), store.PutOptions{})
	}
	s.Close()
	utDamageIndex(t, dir, func(b []byte) []byte {
		for _, p := range utLeavesWith(b, "k0200", "task\x00k0200") {
			for i := p * 4096; i < (p+1)*4096; i++ {
				b[i] = 0xee
			}
		}
		return b
	})
	orphan := []byte("a value no entry names")
	h := sha256.Sum256(orphan)
	hx := hex.EncodeToString(h[:])
	orphanPath := filepath.Join(dir, "blobs", hx[:2], hx)
	if err := os.WriteFile(orphanPath, orphan, 0o444); err != nil {
		t.Fatal(err)
	}
	logs := &utSyncBuffer{}
	s, err := store.Open(dir, store.Options{Logger: slog.New(slog.NewTextHandler(logs, nil))})
	if err != nil {
		t.Fatalf("Open: %v (the damage is meant to be out of its reach)", err)
	}
	defer s.Close()
	for deadline := time.Now().Add(10 * time.Second); !strings.Contains(logs.String(), "orphan sweep skipped"); time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no word of the damage in the log: %s", logs.String())
		}
	}
	if !strings.Contains(logs.String(), "fsck --repair") {
		t.Errorf("the log does not say what to do: %s", logs.String())
	}
	if _, err := os.Stat(orphanPath); err != nil {
		t.Errorf("the sweep ran over a damaged index: %v", err)
	}
	if _, err := s.Fsck(false); !errors.Is(err, store.ErrIndexDamaged) {
		t.Errorf("Fsck: %v, want ErrIndexDamaged", err)
	}
}

type utSyncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *utSyncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *utSyncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}
