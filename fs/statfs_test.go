package fs

import (
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestStatfs: df on the mount shows the total quota and usage; on a scope
// directory, that scope's.
func TestStatfs(t *testing.T) {
	tm := mountStore(t, mountOptions{config: "scopes:\n  task: {quota: 64MB}\n"})
	writeFile(t, tm.path("task", "a"), pattern(1<<20, 1))           // 1 MiB
	writeFile(t, tm.path("project", "b"), pattern(3<<20, 2))        // 3 MiB
	writeFile(t, tm.path("instructions", "c.md"), pattern(4096, 3)) // 4 KiB

	const mb = 1 << 20
	total := int64(10+5+20+64+200) * mb
	cases := []struct {
		path        string
		quota, used int64
		keys        uint64
	}{
		{tm.dir, total, 4*mb + 4096, 3},
		{tm.path("task"), 64 * mb, 1 * mb, 1},
		{tm.path("project"), 20 * mb, 3 * mb, 1},
		{tm.path("system"), 10 * mb, 0, 0},
	}
	for _, c := range cases {
		var st unix.Statfs_t
		if err := unix.Statfs(c.path, &st); err != nil {
			t.Fatalf("statfs %s: %v", c.path, err)
		}
		bs := int64(st.Bsize)
		if got := int64(st.Blocks) * bs; got != c.quota {
			t.Errorf("%s: size %d, want the quota %d", c.path, got, c.quota)
		}
		if got := int64(st.Blocks-st.Bfree) * bs; got < c.used || got > c.used+bs {
			t.Errorf("%s: used %d, want %d", c.path, got, c.used)
		}
		if st.Bavail != st.Bfree {
			t.Errorf("%s: bavail %d != bfree %d", c.path, st.Bavail, st.Bfree)
		}
		if st.Files != c.keys {
			t.Errorf("%s: files %d, want %d keys", c.path, st.Files, c.keys)
		}
		if st.Namelen != 255 {
			t.Errorf("%s: namelen %d", c.path, st.Namelen)
		}

		// df, in 1K blocks: size and used.
		out := run(t, "df", "-k", "--output=size,used", c.path)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		f := strings.Fields(lines[len(lines)-1])
		size, _ := strconv.ParseInt(f[0], 10, 64)
		used, _ := strconv.ParseInt(f[1], 10, 64)
		if size != c.quota/1024 {
			t.Errorf("df %s: size %dK, want %dK", c.path, size, c.quota/1024)
		}
		if used < c.used/1024 || used > (c.used+bs)/1024 {
			t.Errorf("df %s: used %dK, want %dK", c.path, used, c.used/1024)
		}
	}
	// df -T shows the type.
	if out := run(t, "df", "-T", tm.dir); !strings.Contains(out, FSType) {
		t.Errorf("df -T:\n%s\nwant type %s", out, FSType)
	}
}
