package fs

// Regression tests of the bugs TestModel found (model_test.go), each made
// deterministic. Where a bug showed only while the kernel's name was being
// invalidated in the background, the test holds the mount's notifier
// (stallNotifier) so that the window stays open.

import (
	"bytes"
	"io"
	"os"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/store"
)

func init() {
	modelRegressions = append(modelRegressions, []struct {
		name string
		ops  []mop
	}{
		{name: "otrunc-without-write", ops: []mop{
			{K: mSession, Key: "k1", Flags: fCreat, Steps: []mstep{{K: sWrite, N: 8856, Tag: "c1.13.1"}}},
			{K: mSession, Key: "k1", Flags: fCreat | fTrunc},
			{K: mRead, Key: "k1"},
		}},
		{name: "ttl-0-kept-on-rewrite", ops: []mop{
			{K: mSession, Key: "k3", Flags: fCreat | fTrunc | fAppend, Steps: []mstep{{K: sWrite, N: 9017, Tag: "c3.40.0"}}},
			{K: mSetTTL, Key: "k3", Val: "0"},
			{K: mSession, Key: "k3", Flags: fCreat | fTrunc | fAppend, Steps: []mstep{{K: sWrite, N: 271, Tag: "c3.57.2"}}},
			{K: mRead, Key: "k3"},
		}},
		{name: "recreated-after-expiry-starts-afresh", ops: []mop{
			{K: mSession, Key: "k0", Flags: fCreat, Steps: []mstep{{K: sWrite, N: 100, Tag: "a"}}},
			{K: mSetCT, Key: "k0", Val: "text/plain"},
			{K: mExpire, Key: "k0"},
			{K: mSession, Key: "k0", Flags: fCreat | fExcl, Steps: []mstep{{K: sWrite, N: 50, Tag: "b"}}},
			{K: mRead, Key: "k0"},
		}},
		{name: "failed-create-leaves-no-name", ops: []mop{
			{K: mSession, Key: "k0", Flags: fCreat, Steps: []mstep{{K: sWrite, N: 76448, Tag: "c2.58.0"}, {K: sFtrunc, N: 136259}, {K: sWrite, N: 7293, Tag: "c2.58.2"}}},
		}},
		{name: "fsync-then-close", ops: []mop{
			{K: mSession, Key: "k2", Flags: fCreat, Steps: []mstep{{K: sWrite, N: 9815, Tag: "a"}}},
			{K: mSession, Key: "k2", Flags: fCreat, Steps: []mstep{{K: sFtrunc}, {K: sFsync}, {K: sFsync}}},
		}},
	}...)
}

// stallNotifier holds the mount's invalidation goroutine until the
// returned function is called (or the test ends): names and attributes the
// kernel cached stay cached.
func stallNotifier(t *testing.T, tm *testMount) (release func()) {
	t.Helper()
	ch := make(chan struct{})
	stalled := make(chan struct{})
	tm.m.root.fs.notes.post(func() { close(stalled); <-ch })
	<-stalled
	done := false
	release = func() {
		if !done {
			done = true
			close(ch)
		}
	}
	t.Cleanup(release) // before the unmount, which waits for the notifier
	return release
}

// TestOTruncWithoutWriteEmpties: open(O_TRUNC) and close, with nothing
// written (`: > file`), leaves the key empty. It used to leave the old value
// (the truncation was staged, and a handle with no writer published
// nothing), while the kernel had already set the file's size to 0.
func TestOTruncWithoutWriteEmpties(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "k")
	writeFile(t, p, []byte("the old value"))
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	tm.wantValue(t, "task", "k", []byte{})
	writeFile(t, p, []byte("again"))
	sh(t, ": > "+p)
	tm.wantValue(t, "task", "k", []byte{})
}

// TestFailedCreateLeavesNoName: a file created through the mount whose
// close fails (here EFBIG) is not there for a stat right after the close.
// Its name used to be forgotten by the kernel only in the background, so
// stat found an empty file the store does not have.
func TestFailedCreateLeavesNoName(t *testing.T) {
	tm := mountStore(t, mountOptions{config: quotaConfig})
	release := stallNotifier(t, tm)
	fd, err := unix.Open(tm.path("task", "big"), unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	wantErrno(t, "ftruncate past the quota", unix.Ftruncate(fd, 1<<20), syscall.EFBIG)
	wantErrno(t, "close", unix.Close(fd), syscall.EFBIG)
	_, err = os.Stat(tm.path("task", "big"))
	wantErrno(t, "stat right after the failed close", err, syscall.ENOENT)
	release()
	tm.wantGone(t, "task", "big")
}

// TestStatAfterFsyncAndClose: a value published by fsync, then closed with
// nothing more written, shows in a stat right after the close. The fsync
// left the kernel's name to be invalidated in the background, and the close
// (which had nothing more to publish) did not wait for it: stat showed the
// value before.
func TestStatAfterFsyncAndClose(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "k")
	writeFile(t, p, bytes.Repeat([]byte("a"), 9815))
	if _, err := os.Stat(p); err != nil { // the kernel caches the name
		t.Fatal(err)
	}
	release := stallNotifier(t, tm)
	f, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(100); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(p); err != nil || fi.Size() != 100 {
		t.Errorf("stat right after close: %v, %v; want 100 bytes", fi, err)
	}
	release()
	tm.wantValue(t, "task", "k", bytes.Repeat([]byte("a"), 100))
}

// TestOpenOfReplacedValueAgreesWithFstat: an open through a name the kernel
// still resolves to the inode of a value that is gone (replaced, its blob
// removed, the invalidation not yet through) reads the current value on an
// inode that shows it: read and fstat agree. It used to read the current
// value through the old inode, whose size fstat (and mmap, wc -c, tail -c)
// took for the value's.
func TestOpenOfReplacedValueAgreesWithFstat(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "k")
	old := bytes.Repeat([]byte("o"), 5000)
	tm.put("task", "k", old, store.PutOptions{})
	if got := readFile(t, p); !bytes.Equal(got, old) { // the kernel caches name and inode
		t.Fatalf("read %d bytes", len(got))
	}
	release := stallNotifier(t, tm)
	cur := bytes.Repeat([]byte("n"), 1234)
	tm.put("task", "k", cur, store.PutOptions{}) // old's blob goes
	data, size, err := readPath(p)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(data, cur) || size != int64(len(cur)) {
		t.Errorf("read %d bytes (%q…), fstat %d; want the current %d bytes on both", len(data), trim(data), size, len(cur))
	}
	release()
	tm.wantValue(t, "task", "k", cur)
}

// TestTruncateUnderReaderKeepsItWhole: truncate(2) of a key that another
// process is reading does not cut that reader's value short. The inode the
// reader had open used to be made to show the truncated value, and the
// kernel cut its size and cached pages under the reader, which got a prefix
// of the old value (neither the old value nor the new one). Found while
// checking the model's truncate.
func TestTruncateUnderReaderKeepsItWhole(t *testing.T) {
	tm := mountStore(t, mountOptions{})
	p := tm.path("task", "k")
	old := bytes.Repeat([]byte("abcdefgh"), 100<<10/8)
	writeFile(t, p, old)
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := make([]byte, 4096)
	if _, err := io.ReadFull(f, got); err != nil {
		t.Fatal(err)
	}
	if err := unix.Truncate(p, 10); err != nil {
		t.Fatal(err)
	}
	rest, err := io.ReadAll(f)
	if err != nil {
		t.Fatal(err)
	}
	if got = append(got, rest...); !bytes.Equal(got, old) {
		t.Errorf("the reader got %d bytes, want the whole old value (%d bytes)", len(got), len(old))
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil || st.Size != int64(len(old)) {
		t.Errorf("fstat of the reader's descriptor: size %d (%v), want %d", st.Size, err, len(old))
	}
	tm.m.Settle()
	tm.wantValue(t, "task", "k", old[:10])
}
