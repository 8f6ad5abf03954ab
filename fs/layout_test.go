package fs

import (
	"bytes"
	"encoding/json"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

var seedScopes = []string{"artifacts", "instructions", "project", "system", "task"}

// TestLayout: the root holds the five scopes and .stats; each scope holds
// _index.json and its keys; modes and owners are the contract's.
func TestLayout(t *testing.T) {
	const uid, gid = 1234, 5678
	tm := mountStore(t, mountOptions{fs: Options{UID: uid, GID: gid}})
	tm.put("task", "alpha", []byte("a"), store.PutOptions{})
	tm.put("task", "beta.txt", []byte("bb"), store.PutOptions{})
	tm.put("project", "gamma", []byte("ccc"), store.PutOptions{})

	wantRoot := append([]string{".stats"}, seedScopes...)
	if got := listDir(t, tm.dir); !reflect.DeepEqual(got, wantRoot) {
		t.Errorf("root lists %q, want %q", got, wantRoot)
	}
	// The real tool agrees (ls -A: dotfiles but no . and ..).
	if got := strings.Fields(run(t, "ls", "-A", tm.dir)); !reflect.DeepEqual(sorted(got), wantRoot) {
		t.Errorf("ls -A root: %q, want %q", got, wantRoot)
	}
	want := map[string][]string{
		"task":         {"_index.json", "alpha", "beta.txt"},
		"project":      {"_index.json", "gamma"},
		"system":       {"_index.json"},
		"instructions": {"_index.json"},
		"artifacts":    {"_index.json"},
	}
	for scope, names := range want {
		if got := listDir(t, tm.path(scope)); !reflect.DeepEqual(got, names) {
			t.Errorf("%s lists %q, want %q", scope, got, names)
		}
	}
	if got := strings.Fields(run(t, "ls", tm.path("task"))); !reflect.DeepEqual(got, want["task"]) {
		t.Errorf("ls task: %q, want %q", got, want["task"])
	}

	check := func(path string, mode uint32, size int64) {
		t.Helper()
		var st syscall.Stat_t
		if err := syscall.Stat(path, &st); err != nil {
			t.Errorf("stat %s: %v", path, err)
			return
		}
		if st.Mode != mode {
			t.Errorf("%s: mode %o, want %o", path, st.Mode, mode)
		}
		if st.Uid != uid || st.Gid != gid {
			t.Errorf("%s: owner %d:%d, want %d:%d", path, st.Uid, st.Gid, uid, gid)
		}
		if size >= 0 && st.Size != size {
			t.Errorf("%s: size %d, want %d", path, st.Size, size)
		}
	}
	check(tm.dir, syscall.S_IFDIR|0o755, -1)
	for _, sc := range seedScopes {
		check(tm.path(sc), syscall.S_IFDIR|0o755, -1)
		check(tm.path(sc, "_index.json"), syscall.S_IFREG|0o444, -1)
	}
	check(tm.path(".stats"), syscall.S_IFREG|0o444, -1)
	check(tm.path("task", "alpha"), syscall.S_IFREG|0o644, 1)
	check(tm.path("task", "beta.txt"), syscall.S_IFREG|0o644, 2)
	check(tm.path("project", "gamma"), syscall.S_IFREG|0o644, 3)

	// ls -l shows the same (the owner by number: 1234 has no name here).
	out := run(t, "ls", "-ln", tm.path("task"))
	if !regexp.MustCompile(`(?m)^-rw-r--r-- +1 +1234 +5678 +1 .* alpha$`).MatchString(out) ||
		!regexp.MustCompile(`(?m)^-r--r--r-- +1 +1234 +5678 +\d+ .* _index.json$`).MatchString(out) {
		t.Errorf("ls -ln task:\n%s\nwant alpha as -rw-r--r-- 1 1234 5678 1 and _index.json -r--r--r--", out)
	}

	// Names that cannot be keys do not exist.
	for _, name := range []string{"missing", ".hidden", "_other", "bad name"} {
		_, err := os.Stat(tm.path("task", name))
		wantErrno(t, "stat task/"+name, err, syscall.ENOENT)
	}
	_, err := os.Stat(tm.path("nosuchscope"))
	wantErrno(t, "stat nosuchscope", err, syscall.ENOENT)
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	for i := range out {
		for j := i + 1; j < len(out); j++ {
			if out[j] < out[i] {
				out[i], out[j] = out[j], out[i]
			}
		}
	}
	return out
}

// TestLayoutConfiguredScope: a scope added by the config is a directory too.
func TestLayoutConfiguredScope(t *testing.T) {
	tm := mountStore(t, mountOptions{config: "scopes:\n  scratch: {quota: 1MB, ttl: 6h}\n"})
	got := listDir(t, tm.dir)
	if !contains(got, "scratch") {
		t.Fatalf("root lists %q, want a scratch scope", got)
	}
	writeFile(t, tm.path("scratch", "k"), []byte("v"))
	if b, err := tm.get("scratch", "k"); err != nil || string(b) != "v" {
		t.Errorf("store has scratch/k = %q, %v", b, err)
	}
}

// TestVirtualFiles: .stats and _index.json are exactly sized, end when read,
// and are read-only.
func TestVirtualFiles(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	tm.put("task", "k1", []byte("hello"), store.PutOptions{})
	tm.put("instructions", "guide.md", []byte("# guide\n"), store.PutOptions{})

	paths := []string{tm.path(".stats")}
	for _, sc := range seedScopes {
		paths = append(paths, tm.path(sc, "_index.json"))
	}
	for _, p := range paths {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatalf("stat %s: %v", p, err)
		}
		out := run(t, "cat", p) // run times out if cat never ends
		if int64(len(out)) != fi.Size() {
			t.Errorf("%s: stat size %d, cat returned %d bytes", p, fi.Size(), len(out))
		}
		if !json.Valid([]byte(out)) {
			t.Errorf("%s is not valid JSON:\n%s", p, out)
		}
		// os.ReadFile trusts the size first, then reads to EOF.
		if b := readFile(t, p); !json.Valid(b) {
			t.Errorf("ReadFile %s: invalid JSON", p)
		}
		// wc -c agrees as well (it may stat, or read).
		if wc := strings.TrimSpace(run(t, "sh", "-c", "wc -c < "+p)); wc != strconv.FormatInt(fi.Size(), 10) {
			t.Errorf("wc -c %s = %s, stat says %d", p, wc, fi.Size())
		}
		// Read-only for everybody, root included.
		if _, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
			t.Errorf("open %s for writing succeeded", p)
		}
	}

	// The index of task names its key.
	idx := readFile(t, tm.path("task", "_index.json"))
	if !strings.Contains(string(idx), "k1") {
		t.Errorf("task/_index.json does not mention k1:\n%s", idx)
	}

	// .stats: the fields the contract lists.
	var st map[string]any
	if err := json.Unmarshal(readFile(t, tm.path(".stats")), &st); err != nil {
		t.Fatalf(".stats: %v", err)
	}
	for _, f := range []string{"scopes", "keys", "bytes", "quota_bytes", "hits", "misses", "verification_failures"} {
		if _, ok := st[f]; !ok {
			t.Errorf(".stats has no %q field: %v", f, st)
		}
	}
	if st["keys"] != float64(2) || st["bytes"] != float64(5+8) {
		t.Errorf(".stats keys=%v bytes=%v, want 2 and 13", st["keys"], st["bytes"])
	}
	scopes, _ := st["scopes"].([]any)
	if len(scopes) != 5 {
		t.Errorf(".stats scopes: %v", scopes)
	}

	// The size follows the content: after a change, stat and cat agree again.
	before, _ := os.Stat(tm.path("task", "_index.json"))
	writeFile(t, tm.path("task", "a-much-longer-key-name-than-before"), []byte("x"))
	after, err := os.Stat(tm.path("task", "_index.json"))
	if err != nil {
		t.Fatal(err)
	}
	if after.Size() <= before.Size() {
		t.Errorf("task/_index.json size %d after adding a key, was %d", after.Size(), before.Size())
	}
	if out := run(t, "cat", tm.path("task", "_index.json")); int64(len(out)) != after.Size() {
		t.Errorf("after a change: stat %d, cat %d", after.Size(), len(out))
	}
}

// TestStatsSizeFollowsContent: .stats is sized when looked up and stat'ed,
// so after the store changes, stat and cat agree again.
func TestStatsSizeFollowsContent(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	// The first stat looks the name up; stat again right after a change
	// (no read in between, which would let the kernel learn the size from
	// EOF): the size is fresh.
	for _, p := range []string{tm.path(".stats"), tm.path("task", "_index.json")} {
		before, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		tm.put("task", "another-key-with-a-long-name", bytes.Repeat([]byte("y"), 123456), store.PutOptions{})
		after, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		data := readFile(t, p)
		if after.Size() != int64(len(data)) {
			t.Errorf("%s: stat right after a change says %d bytes (before the change: %d), content has %d",
				p, after.Size(), before.Size(), len(data))
		}
		if err := tm.store.Delete("task", "another-key-with-a-long-name"); err != nil {
			t.Fatal(err)
		}
	}
	p := tm.path(".stats")
	for i := 0; i < 3; i++ {
		fi, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		out := run(t, "cat", p)
		if int64(len(out)) != fi.Size() {
			t.Errorf("round %d: stat .stats says %d bytes, cat returned %d", i, fi.Size(), len(out))
		}
		// Grow the numbers in .stats and _index.json: more keys and bytes.
		for j := 0; j < 10; j++ {
			tm.put("task", "k"+strconv.Itoa(i*10+j), bytes.Repeat([]byte("x"), 1000*(j+1)), store.PutOptions{})
		}
	}
}

// TestIndexJSONFollowsChanges: _index.json is cached between changes, so
// every kind of change must show in it at once, with stat's size exact.
func TestIndexJSONFollowsChanges(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	idx := tm.path("task", "_index.json")
	check := func(what string, want, notWant []string) {
		t.Helper()
		b, err := os.ReadFile(idx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		fi, err := os.Stat(idx)
		if err != nil || fi.Size() != int64(len(b)) {
			t.Errorf("%s: stat size %d, cat %d bytes (%v)", what, fi.Size(), len(b), err)
		}
		for _, k := range want {
			if !strings.Contains(string(b), `"`+k+`": {`) {
				t.Errorf("%s: %s missing from _index.json", what, k)
			}
		}
		for _, k := range notWant {
			if strings.Contains(string(b), `"`+k+`": {`) {
				t.Errorf("%s: %s still in _index.json", what, k)
			}
		}
	}
	check("empty", nil, []string{"a"})
	if err := os.WriteFile(tm.path("task", "a"), []byte("1"), 0o644); err != nil {
		t.Fatal(err)
	}
	check("after create", []string{"a"}, nil)
	if _, err := tm.store.Put("task", "b", strings.NewReader("22"), store.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	check("after a put through the store", []string{"a", "b"}, nil)
	if err := os.Rename(tm.path("task", "a"), tm.path("task", "c")); err != nil {
		t.Fatal(err)
	}
	check("after rename", []string{"b", "c"}, []string{"a"})
	if err := os.Remove(tm.path("task", "b")); err != nil {
		t.Fatal(err)
	}
	check("after rm", []string{"c"}, []string{"a", "b"})
}

// TestDirectoryTimes: the root and the scopes carry the mount's time, not
// the epoch (find -newer, ls -l and backup tools read them).
func TestDirectoryTimes(t *testing.T) {
	before := time.Now().Add(-time.Second)
	tm := mountStore(t, mountOptions{})
	for _, p := range []string{tm.dir, tm.path("task"), tm.path("instructions")} {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if mt := time.Unix(st.Mtim.Unix()); mt.Before(before) || mt.After(time.Now().Add(time.Second)) {
			t.Errorf("%s: mtime %v, want the mount's time (after %v)", p, mt, before)
		}
	}
}
