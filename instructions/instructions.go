// Package instructions owns the canonical instruction sets an agent loads
// from the cache on demand: their embedded text and versions, the seeder
// that keeps them in the instructions scope, and the reference block that
// the prompt builder puts in the agent's prompt instead of the sets.
package instructions

import (
	"bytes"
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"strings"
	"sync"
)

//go:embed sets/*.md
var embedded embed.FS

// Scope is where the sets live in the cache.
const Scope = "instructions"

// ContentType is the content type of every set.
const ContentType = "text/markdown"

// MetaVersion is the metadata field holding a stored set's version.
const MetaVersion = "version"

// Set is one canonical instruction set.
type Set struct {
	Key         string // its key in the instructions scope
	Task        string // the task type it serves, e.g. "presentation"
	Title       string // the document's first heading
	Description string // its one-line summary (the "> " line)
	Version     string // derived from the content: editing the file changes it
	Content     []byte
}

// keys lists the sets in the order the reference block shows them.
var keys = []string{
	"instruction_presentation",
	"instruction_document_creation",
	"instruction_research",
	"instruction_web_development",
}

var (
	loadOnce sync.Once
	sets     []Set
	loadErr  error
)

// Canonical returns the embedded sets, in reference-block order.
func Canonical() []Set {
	loadOnce.Do(func() { sets, loadErr = load() })
	if loadErr != nil {
		// The sets are compiled in; a malformed one is a build error that
		// the package's tests catch.
		panic(loadErr)
	}
	return sets
}

// Lookup returns the canonical set stored under key.
func Lookup(key string) (Set, bool) {
	for _, s := range Canonical() {
		if s.Key == key {
			return s, true
		}
	}
	return Set{}, false
}

// IsCanonical reports whether scope/key holds a canonical set.
func IsCanonical(scope, key string) bool {
	if scope != Scope {
		return false
	}
	_, ok := Lookup(key)
	return ok
}

func load() ([]Set, error) {
	out := make([]Set, 0, len(keys))
	for _, k := range keys {
		b, err := embedded.ReadFile("sets/" + k + ".md")
		if err != nil {
			return nil, err
		}
		s, err := parse(k, b)
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// parse takes the title from the first line ("# Title") and the
// description from the first "> " line.
func parse(key string, b []byte) (Set, error) {
	s := Set{Key: key, Task: strings.TrimPrefix(key, "instruction_"), Content: b, Version: VersionOf(b)}
	for _, line := range strings.Split(string(b), "\n") {
		line = strings.TrimSpace(line)
		switch {
		case s.Title == "" && strings.HasPrefix(line, "# "):
			s.Title = strings.TrimSpace(line[2:])
		case s.Description == "" && strings.HasPrefix(line, "> "):
			s.Description = strings.TrimSpace(line[2:])
		}
		if s.Title != "" && s.Description != "" {
			break
		}
	}
	if s.Title == "" || s.Description == "" {
		return Set{}, fmt.Errorf("instruction set %s: needs a '# Title' line and a '> description' line", key)
	}
	if !bytes.HasSuffix(b, []byte("\n")) {
		return Set{}, fmt.Errorf("instruction set %s: must end with a newline", key)
	}
	return s, nil
}

// VersionOf is the version of a set's content: the first 12 hex digits of
// its SHA-256, so any edit is a new version without anyone bumping a number.
func VersionOf(content []byte) string {
	sum := sha256.Sum256(content)
	return hex.EncodeToString(sum[:6])
}
