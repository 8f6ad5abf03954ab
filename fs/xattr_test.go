package fs

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

// getfattrDump runs getfattr -d -m - and returns name -> value.
func getfattrDump(t *testing.T, path string) map[string]string {
	t.Helper()
	out := run(t, "getfattr", "--absolute-names", "-d", "-m", "-", path)
	attrs := map[string]string{}
	re := regexp.MustCompile(`^([^=]+)(?:="(.*)")?$`)
	for _, line := range strings.Split(out, "\n") {
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		m := re.FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("getfattr line %q", line)
		}
		attrs[m[1]] = m[2]
	}
	return attrs
}

func TestXattrs(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	content := []byte("# Guide\n\nSome markdown.\n")
	p := tm.path("task", "guide.md")
	writeFile(t, p, content)

	attrs := getfattrDump(t, p)
	sum := sha256.Sum256(content)
	if got := attrs["user.iris.fingerprint"]; got != hex.EncodeToString(sum[:]) {
		t.Errorf("fingerprint %q, want the sha256 %x", got, sum)
	}
	if got := attrs["user.iris.content_type"]; !strings.HasPrefix(got, "text/markdown") {
		t.Errorf("content_type %q", got)
	}
	created, err := time.Parse(time.RFC3339Nano, attrs["user.iris.created_at"])
	if err != nil || time.Since(created) > time.Minute || time.Since(created) < 0 {
		t.Errorf("created_at %q (%v)", attrs["user.iris.created_at"], err)
	}
	expires, err := time.Parse(time.RFC3339Nano, attrs["user.iris.expires_at"])
	if err != nil || !expires.Equal(created.Add(24*time.Hour)) {
		t.Errorf("expires_at %q, want created_at + 24h (%v)", attrs["user.iris.expires_at"], err)
	}
	if got := attrs["user.iris.ttl_hours"]; got != "24" {
		t.Errorf("ttl_hours %q, want 24", got)
	}
	if got := attrs["user.iris.ttl"]; got != "24h0m0s" {
		t.Errorf("ttl %q, want 24h0m0s", got)
	}
	for _, name := range []string{"fingerprint", "content_type", "created_at", "expires_at", "ttl_hours", "ttl"} {
		if _, ok := attrs["user.iris."+name]; !ok {
			t.Errorf("getfattr -d does not show user.iris.%s: %v", name, attrs)
		}
	}

	// Free metadata: set, read, list, replace, remove.
	run(t, "setfattr", "-n", "user.iris.meta.owner", "-v", "agent-7", p)
	if out := run(t, "getfattr", "--only-values", "-n", "user.iris.meta.owner", p); out != "agent-7" {
		t.Errorf("meta.owner = %q", out)
	}
	if attrs := getfattrDump(t, p); attrs["user.iris.meta.owner"] != "agent-7" {
		t.Errorf("getfattr -d does not list meta.owner: %v", attrs)
	}
	if err := unix.Setxattr(p, "user.iris.meta.owner", []byte("x"), unix.XATTR_CREATE); err != syscall.EEXIST {
		t.Errorf("XATTR_CREATE of an existing meta: %v, want EEXIST", err)
	}
	if err := unix.Setxattr(p, "user.iris.meta.other", []byte("x"), unix.XATTR_REPLACE); err != syscall.ENODATA {
		t.Errorf("XATTR_REPLACE of a missing meta: %v, want ENODATA", err)
	}
	run(t, "setfattr", "-n", "user.iris.meta.owner", "-v", "agent-8", p)
	if e, _ := tm.store.Lookup("task", "guide.md"); e.Meta["owner"] != "agent-8" {
		t.Errorf("store meta %v", e.Meta)
	}
	run(t, "setfattr", "-x", "user.iris.meta.owner", p)
	if _, err := unix.Getxattr(p, "user.iris.meta.owner", make([]byte, 64)); err != syscall.ENODATA {
		t.Errorf("getxattr after removexattr: %v, want ENODATA", err)
	}
	wantErrno(t, "removexattr of a missing meta", unix.Removexattr(p, "user.iris.meta.owner"), syscall.ENODATA)
	wantErrno(t, "bad meta name", unix.Setxattr(p, "user.iris.meta.a b", []byte("x"), 0), syscall.EINVAL)

	// Content type is settable; a rewrite keeps it and the metadata.
	run(t, "setfattr", "-n", "user.iris.content_type", "-v", "application/json", p)
	run(t, "setfattr", "-n", "user.iris.meta.keep", "-v", "yes", p)
	writeFile(t, p, []byte(`{"rewritten": true}`))
	attrs = getfattrDump(t, p)
	if attrs["user.iris.content_type"] != "application/json" || attrs["user.iris.meta.keep"] != "yes" {
		t.Errorf("after a rewrite: %v", attrs)
	}
	sum = sha256.Sum256([]byte(`{"rewritten": true}`))
	if attrs["user.iris.fingerprint"] != hex.EncodeToString(sum[:]) {
		t.Errorf("fingerprint after a rewrite: %s", attrs["user.iris.fingerprint"])
	}

	// TTL in hours.
	run(t, "setfattr", "-n", "user.iris.ttl_hours", "-v", "6", p)
	if attrs := getfattrDump(t, p); attrs["user.iris.ttl"] != "6h0m0s" || attrs["user.iris.ttl_hours"] != "6" {
		t.Errorf("after ttl_hours=6: %v", attrs)
	}
	wantErrno(t, "bad ttl", unix.Setxattr(p, "user.iris.ttl", []byte("soon"), 0), syscall.EINVAL)
	wantErrno(t, "negative ttl_hours", unix.Setxattr(p, "user.iris.ttl_hours", []byte("-1"), 0), syscall.EINVAL)

	// Derived attributes are read-only.
	for _, name := range []string{"fingerprint", "created_at", "expires_at"} {
		err := unix.Setxattr(p, "user.iris."+name, []byte("x"), 0)
		wantErrno(t, "set user.iris."+name, err, syscall.EPERM)
		wantErrno(t, "remove user.iris."+name, unix.Removexattr(p, "user.iris."+name), syscall.EPERM)
	}
	if _, err := runErr("setfattr", "-n", "user.iris.fingerprint", "-v", "00", p); err == nil || !strings.Contains(err.Error(), "Operation not permitted") {
		t.Errorf("setfattr fingerprint: %v", err)
	}
	// Outside user.iris.*: not supported; missing ones are ENODATA.
	wantErrno(t, "set user.other", unix.Setxattr(p, "user.other", []byte("x"), 0), syscall.ENOTSUP)
	_, err = unix.Getxattr(p, "user.other", make([]byte, 16))
	wantErrno(t, "get user.other", err, syscall.ENODATA)
	// A buffer too small: ERANGE; size query works.
	if n, err := unix.Getxattr(p, "user.iris.fingerprint", nil); err != nil || n != 64 {
		t.Errorf("size query: %d, %v", n, err)
	}
	_, err = unix.Getxattr(p, "user.iris.fingerprint", make([]byte, 10))
	wantErrno(t, "small buffer", err, syscall.ERANGE)
}

// TestTTLExpiry: an entry given a 1 s TTL disappears from ls and lookups
// when it expires, without a prune, and the kernel's caches do not keep it.
func TestTTLExpiry(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "short")
	writeFile(t, p, []byte("v"))
	writeFile(t, tm.path("task", "long"), []byte("v"))
	// Let the kernel cache the name and attributes first.
	for i := 0; i < 3; i++ {
		if _, err := os.Stat(p); err != nil {
			t.Fatal(err)
		}
		readFile(t, p)
	}
	run(t, "setfattr", "-n", "user.iris.ttl", "-v", "1s", p)
	set := time.Now()
	if attrs := getfattrDump(t, p); attrs["user.iris.ttl"] != "1s" {
		t.Errorf("ttl after setfattr: %v", attrs)
	}
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("stat right after setfattr: %v", err)
	}
	time.Sleep(time.Until(set.Add(1200 * time.Millisecond)))

	if got := strings.Fields(run(t, "ls", tm.path("task"))); contains(got, "short") || !contains(got, "long") {
		t.Errorf("ls after expiry: %q", got)
	}
	_, err := os.Stat(p)
	wantErrno(t, "stat after expiry", err, syscall.ENOENT)
	_, err = os.ReadFile(p)
	wantErrno(t, "read after expiry", err, syscall.ENOENT)
	if _, err := runErr("stat", p); err == nil {
		t.Errorf("stat tool after expiry succeeded")
	}
	if idx := readFile(t, tm.path("task", "_index.json")); strings.Contains(string(idx), `"short"`) {
		t.Errorf("_index.json lists the expired key:\n%s", idx)
	}
	// Writing it again makes it live again.
	writeFile(t, p, []byte("again"))
	tm.wantValue(t, "task", "short", []byte("again"))
}

// TestTTLExpiryInjectedClock: with the store's clock moved past an entry's
// expiry, the entry is gone from ls, lookups, _index.json and .stats.
func TestTTLExpiryInjectedClock(t *testing.T) {
	clk := newFakeClock()
	// Kernel caches use the real clock: keep them short so lookups reach us.
	tm := mountStore(t, mountOptions{clock: clk, fs: Options{CacheTimeout: time.Millisecond}})
	tm.put("task", "k", []byte("v"), store.PutOptions{})                       // 24 h
	tm.put("task", "day2", []byte("v"), store.PutOptions{TTL: 48 * time.Hour}) // 48 h
	tm.put("system", "s", []byte("v"), store.PutOptions{})                     // 168 h
	tm.wantValue(t, "task", "k", []byte("v"))

	clk.Advance(25 * time.Hour)
	time.Sleep(20 * time.Millisecond)
	if got := listDir(t, tm.path("task")); contains(got, "k") || !contains(got, "day2") {
		t.Errorf("task lists %q 25 h later", got)
	}
	_, err := os.Stat(tm.path("task", "k"))
	wantErrno(t, "stat 25 h later", err, syscall.ENOENT)
	tm.wantValue(t, "task", "day2", []byte("v"))
	tm.wantValue(t, "system", "s", []byte("v"))
	var st struct {
		Keys   int64 `json:"keys"`
		Scopes []struct {
			Scope       string `json:"scope"`
			ExpiredKeys int64  `json:"expired_keys"`
		} `json:"scopes"`
	}
	if err := json.Unmarshal(readFile(t, tm.path(".stats")), &st); err != nil {
		t.Fatal(err)
	}
	if st.Keys != 2 {
		t.Errorf(".stats keys = %d, want 2", st.Keys)
	}
	for _, sc := range st.Scopes {
		if sc.Scope == "task" && sc.ExpiredKeys != 1 {
			t.Errorf(".stats task expired_keys = %d, want 1", sc.ExpiredKeys)
		}
	}
	clk.Advance(24 * time.Hour)
	time.Sleep(20 * time.Millisecond)
	if got := listDir(t, tm.path("task")); len(got) != 1 {
		t.Errorf("task lists %q 49 h later, want only _index.json", got)
	}
}

// TestForeignXattrNamespaces: security.*, system.* (POSIX ACLs) and
// trusted.* do not exist here and every node says so with ENOTSUP, which
// `ls -l` remembers per device: listing a scope asks the daemon twice in
// all, not twice per file. Setting an ACL is refused and changes nothing.
func TestForeignXattrNamespaces(t *testing.T) {
	var ops opCounter
	tm := mountStore(t, mountOptions{wrapRaw: ops.wrap})
	const files = 50
	for i := 0; i < files; i++ {
		writeFile(t, tm.path("task", fmt.Sprintf("k%02d", i)), []byte("v"))
	}
	p := tm.path("task", "k00")
	for _, node := range []string{p, tm.path("task"), tm.dir, tm.path(".stats"), tm.path("task", "_index.json")} {
		for _, name := range []string{"security.selinux", "system.posix_acl_access", "system.posix_acl_default", "trusted.x", "security.capability"} {
			_, err := unix.Lgetxattr(node, name, make([]byte, 256))
			wantErrno(t, "get "+name+" of "+node, err, syscall.ENOTSUP)
		}
		_, err := unix.Lgetxattr(node, "user.other", make([]byte, 256))
		wantErrno(t, "get user.other of "+node, err, syscall.ENODATA)
	}

	ops.take()
	out, err := exec.Command("ls", "-l", tm.path("task")).CombinedOutput()
	if err != nil {
		t.Fatalf("ls -l: %v: %s", err, out)
	}
	if n := strings.Count(string(out), "\n"); n != files+2 { // "total", _index.json
		t.Errorf("ls -l printed %d lines, want %d:\n%s", n, files+2, out)
	}
	if n := ops.take()["GETXATTR"]; n > 4 {
		t.Errorf("ls -l of %d files sent %d GETXATTR requests, want at most 4 (ENOTSUP is remembered per device)", files, n)
	}

	// user::rw- user:65534:r-- group::r-- mask::r-- other::r--: not
	// expressible as a mode, so it reaches the filesystem.
	acl := []byte{2, 0, 0, 0}
	for _, e := range []struct {
		tag, perm uint16
		id        uint32
	}{{0x01, 6, 0xffffffff}, {0x02, 4, 65534}, {0x04, 4, 0xffffffff}, {0x10, 4, 0xffffffff}, {0x20, 4, 0xffffffff}} {
		acl = binary.LittleEndian.AppendUint16(acl, e.tag)
		acl = binary.LittleEndian.AppendUint16(acl, e.perm)
		acl = binary.LittleEndian.AppendUint32(acl, e.id)
	}
	err = unix.Setxattr(p, "system.posix_acl_access", acl, 0)
	wantErrno(t, "set an access ACL", err, syscall.EOPNOTSUPP)
	_, err = unix.Getxattr(p, "system.posix_acl_access", make([]byte, 256))
	wantErrno(t, "get the access ACL after the refused set", err, syscall.EOPNOTSUPP)
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil || st.Mode&0o777 != 0o644 {
		t.Errorf("mode after the refused ACL: %o (%v), want 644", st.Mode&0o777, err)
	}
	tm.wantValue(t, "task", "k00", []byte("v"))
}
