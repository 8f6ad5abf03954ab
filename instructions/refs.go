package instructions

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"strings"
	"sync"

	"github.com/tiktoken-go/tokenizer"
)

// DefaultMount is where the cache is mounted inside a sandbox.
const DefaultMount = "/workspace/.iris/kv-cache"

// Encoding is the tokenizer the counts use (GPT-4o's, offline).
const Encoding = tokenizer.O200kBase

var (
	codecOnce sync.Once
	codec     tokenizer.Codec
)

// Tokens counts the tokens of text with Encoding.
func Tokens(text []byte) int {
	codecOnce.Do(func() {
		c, err := tokenizer.Get(Encoding)
		if err != nil {
			panic(err) // compiled-in tables: cannot fail
		}
		codec = c
	})
	n, err := codec.Count(string(text))
	if err != nil {
		panic(err)
	}
	return n
}

// Block is the markdown the prompt builder injects instead of the sets:
// for each set its key, description, size in tokens and the command that
// loads it, then a line on the other scopes. The same set versions and
// mount always give the same bytes, so provider prompt caches keep
// matching.
func Block(mount string) []byte {
	var b bytes.Buffer
	b.WriteString("## Instruction sets (load on demand)\n\n")
	b.WriteString("Detailed instructions for each kind of task are in files, not in this prompt. ")
	b.WriteString("Before you start a task of one of these kinds, load its set with the command shown and follow it; ")
	b.WriteString("load only the set the task needs, and do not guess what a set says.\n\n")
	for _, s := range Canonical() {
		fmt.Fprintf(&b, "- **%s** (`%s`, %d tokens): %s\n  `cat %s`\n",
			s.Title, s.Key, Tokens(s.Content), s.Description, path.Join(mount, Scope, s.Key))
	}
	fmt.Fprintf(&b, "\nThe same cache holds `%s/project/` (project summaries), `%s/task/` (data of the current task) "+
		"and `%s/artifacts/` (search results, analyses): `ls` a directory, `cat` what you need, "+
		"and save results you will need again with `cat > %s/artifacts/NAME` (names: letters, digits, `.`, `_`, `-`).\n",
		mount, mount, mount, mount)
	return b.Bytes()
}

// BlockHash is the SHA-256 of Block(mount), hex.
func BlockHash(mount string) string {
	sum := sha256.Sum256(Block(mount))
	return hex.EncodeToString(sum[:])
}

// Inline is what the prompt carried before the cache: every set in full.
// The fallback prints it when the cache cannot be trusted.
func Inline() []byte {
	var b bytes.Buffer
	for i, s := range Canonical() {
		if i > 0 {
			b.WriteString("\n")
		}
		b.Write(s.Content)
	}
	return b.Bytes()
}

// Report holds the token figures of the reference block against the sets.
type Report struct {
	Encoding    string       `json:"encoding"`
	InlineAll   int          `json:"inline_all_sets"`
	BlockTokens int          `json:"reference_block"`
	Saved       int          `json:"saved"`
	SavedPct    float64      `json:"saved_percent"`
	Tasks       []TaskReport `json:"per_task"`
}

// TaskReport is the cost of one task type: the block plus the set it loads.
type TaskReport struct {
	Task       string  `json:"task"`
	Key        string  `json:"key"`
	SetTokens  int     `json:"set_tokens"`
	WithBlock  int     `json:"block_plus_set"`
	SavedPct   float64 `json:"saved_percent_vs_inline"`
	SavedTotal int     `json:"saved_vs_inline"`
}

// Measure computes the report for a block naming mount.
func Measure(mount string) Report {
	r := Report{Encoding: string(Encoding), BlockTokens: Tokens(Block(mount)), InlineAll: Tokens(Inline())}
	r.Saved = r.InlineAll - r.BlockTokens
	r.SavedPct = pct(r.Saved, r.InlineAll)
	for _, s := range Canonical() {
		t := TaskReport{Task: s.Task, Key: s.Key, SetTokens: Tokens(s.Content)}
		t.WithBlock = r.BlockTokens + t.SetTokens
		t.SavedTotal = r.InlineAll - t.WithBlock
		t.SavedPct = pct(t.SavedTotal, r.InlineAll)
		r.Tasks = append(r.Tasks, t)
	}
	return r
}

func pct(part, whole int) float64 {
	if whole == 0 {
		return 0
	}
	return float64(int(1000*float64(part)/float64(whole)+0.5)) / 10
}

// String renders the report as the table `refs --report` prints.
func (r Report) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tokens (%s)\n", r.Encoding)
	fmt.Fprintf(&b, "  all %d instruction sets inline   %6d\n", len(r.Tasks), r.InlineAll)
	fmt.Fprintf(&b, "  reference block instead          %6d   saves %d (%.1f%%)\n", r.BlockTokens, r.Saved, r.SavedPct)
	b.WriteString("  per task: block + the one set it loads\n")
	for _, t := range r.Tasks {
		fmt.Fprintf(&b, "    %-20s %6d + %5d = %6d   saves %d (%.1f%%) against all inline\n",
			t.Task, r.BlockTokens, t.SetTokens, t.WithBlock, t.SavedTotal, t.SavedPct)
	}
	return b.String()
}
