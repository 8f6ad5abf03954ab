package instructions_test

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/store"
)

func TestCanonicalSets(t *testing.T) {
	sets := instructions.Canonical()
	want := []string{"instruction_presentation", "instruction_document_creation", "instruction_research", "instruction_web_development"}
	if len(sets) != len(want) {
		t.Fatalf("%d sets, want %d", len(sets), len(want))
	}
	for i, s := range sets {
		if s.Key != want[i] {
			t.Errorf("set %d is %s, want %s", i, s.Key, want[i])
		}
		if err := store.ValidateKey(s.Key); err != nil {
			t.Errorf("%s is not a valid key: %v", s.Key, err)
		}
		onDisk, err := os.ReadFile(filepath.Join("sets", s.Key+".md"))
		if err != nil || !bytes.Equal(onDisk, s.Content) {
			t.Errorf("%s: embedded content differs from sets/%s.md (%v)", s.Key, s.Key, err)
		}
		if s.Title == "" || s.Description == "" || strings.Contains(s.Description, "\n") {
			t.Errorf("%s: title %q, description %q", s.Key, s.Title, s.Description)
		}
		sum := sha256.Sum256(s.Content)
		if s.Version != hex.EncodeToString(sum[:6]) {
			t.Errorf("%s: version %s is not derived from the content", s.Key, s.Version)
		}
		// "roughly 3k-6k tokens" each: a real document, not a stub, and
		// not a second prompt.
		if n := instructions.Tokens(s.Content); n < 2500 || n > 7000 {
			t.Errorf("%s: %d tokens, want roughly 3k-6k", s.Key, n)
		}
	}
}

func TestVersionFollowsContent(t *testing.T) {
	s := instructions.Canonical()[0]
	edited := append(bytes.Clone(s.Content), []byte("One more rule.\n")...)
	if instructions.VersionOf(edited) == s.Version {
		t.Fatal("an edit did not change the version")
	}
	if instructions.VersionOf(bytes.Clone(s.Content)) != s.Version {
		t.Fatal("the same content gave another version")
	}
}

func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir(), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func did(actions []instructions.Action) map[string]string {
	m := map[string]string{}
	for _, a := range actions {
		m[a.Key] = a.Did
	}
	return m
}

func TestSeedIsIdempotentAndRepairs(t *testing.T) {
	s := openStore(t)
	first, err := instructions.Seed(s, false)
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range did(first) {
		if d != "written" {
			t.Errorf("first seed: %s %s, want written", k, d)
		}
	}
	for _, set := range instructions.Canonical() {
		b, e, err := s.Get(instructions.Scope, set.Key)
		if err != nil || !bytes.Equal(b, set.Content) {
			t.Fatalf("%s not stored: %v", set.Key, err)
		}
		if e.ContentType != instructions.ContentType || e.Meta[instructions.MetaVersion] != set.Version {
			t.Errorf("%s: content type %q, version %q", set.Key, e.ContentType, e.Meta[instructions.MetaVersion])
		}
	}
	statsBefore, _ := s.Stats()
	second, err := instructions.Seed(s, false)
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range did(second) {
		if d != "unchanged" {
			t.Errorf("second seed: %s %s, want unchanged", k, d)
		}
	}
	if b, _ := s.List(instructions.Scope); len(b) != 4 {
		t.Errorf("%d keys after two seeds", len(b))
	}
	_ = statsBefore

	// Another version (an older binary seeded it), a deletion, and a
	// corrupt blob: the next seed rewrites exactly those.
	sets := instructions.Canonical()
	if _, err := s.Put(instructions.Scope, sets[0].Key, strings.NewReader("old text\n"), store.PutOptions{
		ContentType: instructions.ContentType, Meta: map[string]string{instructions.MetaVersion: "000000000000"}}); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(instructions.Scope, sets[1].Key); err != nil {
		t.Fatal(err)
	}
	e, err := s.Lookup(instructions.Scope, sets[2].Key)
	if err != nil {
		t.Fatal(err)
	}
	corrupt(t, s, e)
	third, err := instructions.Seed(s, false)
	if err != nil {
		t.Fatal(err)
	}
	got := did(third)
	want := map[string]string{sets[0].Key: "replaced", sets[1].Key: "written", sets[2].Key: "replaced", sets[3].Key: "unchanged"}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("third seed: %s %s, want %s (%v)", k, got[k], w, third)
		}
	}
	for _, set := range sets {
		if b, _, err := s.Get(instructions.Scope, set.Key); err != nil || !bytes.Equal(b, set.Content) {
			t.Errorf("%s not canonical after reseed: %v", set.Key, err)
		}
	}
	forced, err := instructions.Seed(s, true)
	if err != nil {
		t.Fatal(err)
	}
	for k, d := range did(forced) {
		if d != "replaced" {
			t.Errorf("forced seed: %s %s", k, d)
		}
	}
}

// corrupt overwrites the blob of e in place (a disk error, an operator's
// slip): only verification can notice.
func corrupt(t *testing.T, s *store.Store, e index.Entry) {
	t.Helper()
	p := s.BlobPath(e.Fingerprint)
	if err := os.Chmod(p, 0o644); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("XXXX"), 10); err != nil {
		t.Fatal(err)
	}
	f.Close()
}

func TestBlockIsSmallStableAndComplete(t *testing.T) {
	block := instructions.Block(instructions.DefaultMount)
	if n := instructions.Tokens(block); n >= 1000 {
		t.Errorf("reference block is %d tokens, must stay under 1,000", n)
	}
	if !bytes.Equal(block, instructions.Block(instructions.DefaultMount)) {
		t.Error("two renderings differ")
	}
	for _, s := range instructions.Canonical() {
		cmd := "`cat /workspace/.iris/kv-cache/instructions/" + s.Key + "`"
		if !bytes.Contains(block, []byte(cmd)) {
			t.Errorf("block lacks %s", cmd)
		}
		if !bytes.Contains(block, []byte(s.Description)) {
			t.Errorf("block lacks the description of %s", s.Key)
		}
	}
	other := instructions.Block("/mnt/kv")
	if !bytes.Contains(other, []byte("`cat /mnt/kv/instructions/instruction_research`")) || bytes.Contains(other, []byte("/workspace")) {
		t.Error("--mount does not change every path")
	}
	sum := sha256.Sum256(block)
	if instructions.BlockHash(instructions.DefaultMount) != hex.EncodeToString(sum[:]) {
		t.Error("BlockHash is not the SHA-256 of the block")
	}
}

// TestReportRecomputed recomputes the headline numbers from the embedded
// files, independently of Measure's arithmetic.
func TestReportRecomputed(t *testing.T) {
	r := instructions.Measure(instructions.DefaultMount)
	var inline bytes.Buffer
	for i, s := range instructions.Canonical() {
		if i > 0 {
			inline.WriteString("\n")
		}
		inline.Write(s.Content)
	}
	all := instructions.Tokens(inline.Bytes())
	block := instructions.Tokens(instructions.Block(instructions.DefaultMount))
	if r.InlineAll != all || r.BlockTokens != block || r.Saved != all-block {
		t.Fatalf("report %+v, recomputed inline %d block %d", r, all, block)
	}
	if len(r.Tasks) != 4 {
		t.Fatalf("%d task rows", len(r.Tasks))
	}
	for i, s := range instructions.Canonical() {
		tr := r.Tasks[i]
		n := instructions.Tokens(s.Content)
		if tr.SetTokens != n || tr.WithBlock != block+n || tr.SavedTotal != all-block-n {
			t.Errorf("%s: %+v, recomputed set %d", s.Key, tr, n)
		}
		if tr.WithBlock >= all/2 {
			t.Errorf("%s: block + set = %d is not a real saving against %d inline", s.Key, tr.WithBlock, all)
		}
	}
	if !strings.Contains(r.String(), "reference block instead") {
		t.Error("report text")
	}
}
