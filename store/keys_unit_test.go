package store_test

import (
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

func TestValidateKey(t *testing.T) {
	cases := []struct {
		key  string
		want error // nil: valid
	}{
		{"a", nil},
		{"Z", nil},
		{"0", nil},
		{"instruction_presentation", nil},
		{"notes.v2.md", nil},
		{"a-b_c.d", nil},
		{"a..b", nil},
		{"trailing.", nil},
		{"trailing-", nil},
		{"trailing_", nil},
		{"9lives", nil},
		{strings.Repeat("k", 255), nil},
		{"a" + strings.Repeat(".", 254), nil},

		{"", store.ErrBadKey},
		{strings.Repeat("k", 256), store.ErrNameTooLong},
		{strings.Repeat("k", 1000), store.ErrNameTooLong},
		{"." + strings.Repeat("k", 255), store.ErrNameTooLong}, // length is checked first
		{".", store.ErrReservedKey},
		{"..", store.ErrReservedKey},
		{".stats", store.ErrReservedKey},
		{"_index.json", store.ErrReservedKey},
		{"_", store.ErrReservedKey},
		{"-leading-dash", store.ErrBadKey},
		{"a/b", store.ErrBadKey},
		{"/abs", store.ErrBadKey},
		{"a b", store.ErrBadKey},
		{"tab\there", store.ErrBadKey},
		{"new\nline", store.ErrBadKey},
		{"nul\x00", store.ErrBadKey},
		{"café", store.ErrBadKey},
		{"a:b", store.ErrBadKey},
		{"a*", store.ErrBadKey},
		{"a~", store.ErrBadKey},
		{"a+b", store.ErrBadKey},
		{"\xff", store.ErrBadKey},
	}
	for _, c := range cases {
		err := store.ValidateKey(c.key)
		name := c.key
		if len(name) > 20 {
			name = name[:20] + "…"
		}
		switch {
		case c.want == nil && err != nil:
			t.Errorf("ValidateKey(%q) = %v, want valid", name, err)
		case c.want != nil && !errors.Is(err, c.want):
			t.Errorf("ValidateKey(%q) = %v, want %v", name, err, c.want)
		}
		// Reserved names are bad keys too (EINVAL); too-long names are not
		// (ENAMETOOLONG), and ordinary bad keys are not "reserved".
		if errors.Is(err, store.ErrReservedKey) && !errors.Is(err, store.ErrBadKey) {
			t.Errorf("ValidateKey(%q): reserved error %v does not match ErrBadKey", name, err)
		}
		if c.want == store.ErrNameTooLong && errors.Is(err, store.ErrBadKey) {
			t.Errorf("ValidateKey(%q): too-long error also matches ErrBadKey", name)
		}
		if c.want == store.ErrBadKey && errors.Is(err, store.ErrReservedKey) {
			t.Errorf("ValidateKey(%q): %v claims the name is reserved", name, err)
		}
	}
}

var utKeyRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// FuzzValidateKey checks ValidateKey against the contract: a key is valid
// exactly when it matches ^[A-Za-z0-9][A-Za-z0-9._-]*$ and has at most 255
// bytes; past 255 bytes the error is ErrNameTooLong; a name starting with
// '.' or '_' is ErrReservedKey (which is also ErrBadKey); anything else
// invalid is ErrBadKey.
func FuzzValidateKey(f *testing.F) {
	for _, k := range []string{"", "a", "notes.md", ".stats", "_index.json", "-x", "a/b", "a b", "café",
		strings.Repeat("k", 255), strings.Repeat("k", 256), "a\x00", "A-Z_0.9", ".."} {
		f.Add(k)
	}
	f.Fuzz(func(t *testing.T, key string) {
		err := store.ValidateKey(key)
		valid := utKeyRE.MatchString(key) && len(key) <= store.MaxKeyLen
		switch {
		case valid && err != nil:
			t.Fatalf("ValidateKey(%q) = %v, but the key follows the rules", key, err)
		case valid:
			return
		case err == nil:
			t.Fatalf("ValidateKey(%q) accepted a key against the rules", key)
		case len(key) > store.MaxKeyLen:
			if !errors.Is(err, store.ErrNameTooLong) {
				t.Fatalf("ValidateKey(%d bytes) = %v, want ErrNameTooLong", len(key), err)
			}
		case key != "" && (key[0] == '.' || key[0] == '_'):
			if !errors.Is(err, store.ErrReservedKey) || !errors.Is(err, store.ErrBadKey) {
				t.Fatalf("ValidateKey(%q) = %v, want ErrReservedKey (an ErrBadKey)", key, err)
			}
		default:
			if !errors.Is(err, store.ErrBadKey) || errors.Is(err, store.ErrReservedKey) || errors.Is(err, store.ErrNameTooLong) {
				t.Fatalf("ValidateKey(%q) = %v, want plain ErrBadKey", key, err)
			}
		}
	})
}

func TestValidateMetaName(t *testing.T) {
	for _, n := range []string{"a", "author", "x.y-z_1", ".dot", strings.Repeat("n", 255)} {
		if err := store.ValidateMetaName(n); err != nil {
			t.Errorf("ValidateMetaName(%q) = %v", n, err)
		}
	}
	for _, n := range []string{"", "a b", "a/b", "é", "a=b", strings.Repeat("n", 256)} {
		if err := store.ValidateMetaName(n); !errors.Is(err, store.ErrBadArgument) {
			t.Errorf("ValidateMetaName(%q) = %v, want ErrBadArgument", n, err)
		}
	}
}

func TestOpErrorFormat(t *testing.T) {
	e := &store.OpError{Op: "put", Scope: "task", Key: "k", Err: store.ErrOverQuota}
	if e.Error() != "put task/k: scope quota exceeded" || !errors.Is(e, store.ErrOverQuota) {
		t.Fatalf("OpError: %q", e.Error())
	}
	e = &store.OpError{Op: "ls", Scope: "task", Err: store.ErrBadScope}
	if e.Error() != "ls task: no such scope" {
		t.Fatalf("OpError without key: %q", e.Error())
	}
	e = &store.OpError{Op: "prune", Err: store.ErrClosed}
	if e.Error() != "prune: store is closed" {
		t.Fatalf("OpError without scope: %q", e.Error())
	}
}
