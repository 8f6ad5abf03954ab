package instructions

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/iriskvfs/iriskvfs/store"
)

// Action is what the seeder did with one set.
type Action struct {
	Key     string `json:"key"`
	Version string `json:"version"`
	// Did is "written" (it was missing or expired), "replaced" (another
	// version, corrupt, or --force) or "unchanged".
	Did    string `json:"did"`
	Reason string `json:"reason,omitempty"`
}

func (a Action) String() string {
	s := fmt.Sprintf("%s %s (version %s)", a.Did, a.Key, a.Version)
	if a.Reason != "" {
		s += ": " + a.Reason
	}
	return s
}

// Seed writes the canonical sets into the instructions scope: those that
// are missing, expired, corrupt or of another version, or all with force.
func Seed(s *store.Store, force bool) ([]Action, error) {
	var out []Action
	for _, set := range Canonical() {
		a, err := ensure(s, set, force)
		if err != nil {
			return out, err
		}
		out = append(out, a)
	}
	return out, nil
}

// Restore rewrites the canonical set key if it is not present and intact;
// it reports whether it wrote anything.
func Restore(s *store.Store, key string) (Action, error) {
	set, ok := Lookup(key)
	if !ok {
		return Action{}, fmt.Errorf("%s is not a canonical instruction set", key)
	}
	return ensure(s, set, false)
}

func ensure(s *store.Store, set Set, force bool) (Action, error) {
	a := Action{Key: set.Key, Version: set.Version, Did: "unchanged"}
	reason, err := check(s, set)
	if err != nil {
		return a, err
	}
	switch {
	case force:
		a.Did, a.Reason = "replaced", "forced"
	case reason == "":
		return a, nil
	case reason == "missing or expired":
		a.Did, a.Reason = "written", reason
	default:
		a.Did, a.Reason = "replaced", reason
	}
	_, err = s.Put(Scope, set.Key, bytes.NewReader(set.Content), store.PutOptions{
		ContentType: ContentType,
		Meta:        map[string]string{MetaVersion: set.Version, "title": set.Title},
	})
	return a, err
}

// check says why the stored copy of set needs rewriting ("" if it does not).
// It verifies the blob on disk, not a cached copy (a seed repairs), and
// opens nothing, so the seeder's checks are not counted as agents' reads.
func check(s *store.Store, set Set) (string, error) {
	e, err := s.Verify(Scope, set.Key)
	switch {
	case errors.Is(err, store.ErrNotFound):
		return "missing or expired", nil
	case errors.Is(err, store.ErrIntegrity):
		return "corrupt", nil
	case err != nil:
		return "", err
	}
	if got := e.Meta[MetaVersion]; got != set.Version {
		if got == "" {
			got = "none"
		}
		return fmt.Sprintf("version %s, canonical is %s", got, set.Version), nil
	}
	if e.Fingerprint != sha256.Sum256(set.Content) {
		return "content differs from the canonical set", nil
	}
	return "", nil
}
