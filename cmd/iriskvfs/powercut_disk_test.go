//go:build linux

package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"
)

// The power-cut test's disk: a block device (a loop device) whose backing
// file is served over FUSE by the test itself, from memory. The FUSE mount
// has no writeback cache, so it is write-through: every write the loop
// device makes reaches recDisk.write as a WRITE request before the loop
// device completes it, and a block-layer flush (a REQ_PREFLUSH, or the
// flush that emulates FUA: loop advertises a volatile write cache and no
// FUA) makes the loop device fsync its backing file, which reaches
// recDisk.fsync as an FSYNC request. recDisk keeps what a disk with a
// volatile write cache would:
//
//   - durable: the image as of the last flush, which a power cut keeps;
//   - pending: the writes since, in the order they came, cut into pieces
//     that do not cross a 4 KiB block: a power cut keeps any subset of
//     them (a volatile cache may have written any of its blocks back);
//   - cur: durable with every pending write applied, what reads see.
//
// cut freezes the disk: from then on every write and flush blocks until
// release, so that no operation that needs the disk can complete after the
// cut (an fsync that returns 0 after it had its flush done before it).
// release lets them all complete while dropping what they write.

const diskBlock = 4096

type diskPiece struct {
	block int64
	off   int // within the block
	data  []byte
}

type diskStats struct {
	writes, writeBytes, fsyncs, reads, allocs int64
	writesSinceFsync                          int64 // writes seen since the last FSYNC
	emptyFsyncs                               int64 // FSYNCs with no write since the previous one
}

type recDisk struct {
	gofs.Inode
	size int64

	mu      sync.Mutex
	cur     map[int64][]byte
	durable map[int64][]byte
	pending []diskPiece
	stats   diskStats
	frozen  bool
	release chan struct{} // closed by unfreeze
	// cutAtFlush > 0: cut when the cutAtFlush-th flush with writes to
	// flush arrives, before it is done; cutDone is closed then.
	cutAtFlush int
	cutMinimum int // counting only flushes with at least this many pieces to flush
	cutDone    chan struct{}
}

var (
	_ gofs.NodeGetattrer = (*recDisk)(nil)
	_ gofs.NodeSetattrer = (*recDisk)(nil)
	_ gofs.NodeOpener    = (*recDisk)(nil)
	_ gofs.NodeReader    = (*recDisk)(nil)
	_ gofs.NodeWriter    = (*recDisk)(nil)
	_ gofs.NodeFsyncer   = (*recDisk)(nil)
	_ gofs.NodeFlusher   = (*recDisk)(nil)
	_ gofs.NodeAllocater = (*recDisk)(nil)
)

// newRecDisk is a disk of size bytes holding image (a map of 4 KiB blocks;
// absent blocks are zero), all of it durable.
func newRecDisk(size int64, image map[int64][]byte) *recDisk {
	d := &recDisk{size: size, cur: map[int64][]byte{}, durable: image, release: make(chan struct{}), cutDone: make(chan struct{})}
	for k, v := range image {
		d.cur[k] = bytes.Clone(v)
	}
	return d
}

func (d *recDisk) Getattr(ctx context.Context, f gofs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	out.Mode = syscall.S_IFREG | 0o600
	out.Size = uint64(d.size)
	out.Blksize = diskBlock
	out.Blocks = uint64(d.size / 512)
	out.Nlink = 1
	return 0
}

func (d *recDisk) Setattr(ctx context.Context, f gofs.FileHandle, in *fuse.SetAttrIn, out *fuse.AttrOut) syscall.Errno {
	if sz, ok := in.GetSize(); ok && int64(sz) != d.size {
		return syscall.EPERM
	}
	return d.Getattr(ctx, f, out)
}

func (d *recDisk) Open(ctx context.Context, flags uint32) (gofs.FileHandle, uint32, syscall.Errno) {
	return nil, 0, 0
}

func (d *recDisk) Flush(ctx context.Context, f gofs.FileHandle) syscall.Errno { return 0 }

func (d *recDisk) Read(ctx context.Context, f gofs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stats.reads++
	if off >= d.size {
		return fuse.ReadResultData(nil), 0
	}
	n := min(int64(len(dest)), d.size-off)
	for i := int64(0); i < n; {
		b, o := (off+i)/diskBlock, int((off+i)%diskBlock)
		m := min(int64(diskBlock-o), n-i)
		if blk := d.cur[b]; blk != nil {
			copy(dest[i:i+m], blk[o:])
		} else {
			clear(dest[i : i+m])
		}
		i += m
	}
	return fuse.ReadResultData(dest[:n]), 0
}

// gate blocks while the disk is frozen; it reports whether the caller may
// record (false: the disk was cut, drop the request).
func (d *recDisk) gate() bool {
	d.mu.Lock()
	frozen, rel := d.frozen, d.release
	d.mu.Unlock()
	if frozen {
		<-rel
		return false
	}
	return true
}

func (d *recDisk) Write(ctx context.Context, f gofs.FileHandle, data []byte, off int64) (uint32, syscall.Errno) {
	if off < 0 || off+int64(len(data)) > d.size {
		return 0, syscall.ENOSPC
	}
	if !d.gate() {
		return uint32(len(data)), 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen { // cut between gate and here: the write did not make it
		return uint32(len(data)), 0
	}
	d.recordLocked(data, off)
	d.stats.writes++
	d.stats.writesSinceFsync++
	d.stats.writeBytes += int64(len(data))
	return uint32(len(data)), 0
}

// recordLocked applies a write to cur and adds it to pending, a piece per
// block it touches.
func (d *recDisk) recordLocked(data []byte, off int64) {
	for i := 0; i < len(data); {
		b, o := (off+int64(i))/diskBlock, int((off+int64(i))%diskBlock)
		m := min(diskBlock-o, len(data)-i)
		p := diskPiece{block: b, off: o, data: bytes.Clone(data[i : i+m])}
		d.pending = append(d.pending, p)
		applyPiece(d.cur, p)
		i += m
	}
}

func applyPiece(img map[int64][]byte, p diskPiece) {
	blk := img[p.block]
	if blk == nil {
		blk = make([]byte, diskBlock)
		img[p.block] = blk
	}
	copy(blk[p.off:], p.data)
}

// Fsync is the flush: everything written so far is durable.
func (d *recDisk) Fsync(ctx context.Context, f gofs.FileHandle, flags uint32) syscall.Errno {
	if !d.gate() {
		return 0
	}
	d.mu.Lock()
	if d.frozen {
		d.mu.Unlock()
		return 0
	}
	if d.cutAtFlush > 0 && len(d.pending) >= max(d.cutMinimum, 1) {
		if d.cutAtFlush--; d.cutAtFlush == 0 {
			d.frozen = true
			close(d.cutDone)
			d.mu.Unlock()
			<-d.release
			return 0
		}
	}
	defer d.mu.Unlock()
	for _, p := range d.pending {
		applyPiece(d.durable, p)
	}
	d.pending = nil
	d.stats.fsyncs++
	if d.stats.writesSinceFsync == 0 {
		d.stats.emptyFsyncs++
	}
	d.stats.writesSinceFsync = 0
	return 0
}

// Allocate serves the loop device's discards and write-zeroes
// (fallocate PUNCH_HOLE or ZERO_RANGE): zeros written, like any write.
func (d *recDisk) Allocate(ctx context.Context, f gofs.FileHandle, off, size uint64, mode uint32) syscall.Errno {
	if mode&(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_ZERO_RANGE) == 0 {
		return syscall.EOPNOTSUPP
	}
	if int64(off+size) > d.size {
		size = uint64(d.size) - off
	}
	if !d.gate() {
		return 0
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.frozen {
		return 0
	}
	d.stats.allocs++
	d.recordLocked(make([]byte, size), int64(off))
	return 0
}

// diskCut is the state of a disk at a power cut.
type diskCut struct {
	size    int64
	durable map[int64][]byte
	pending []diskPiece
}

// armFlushCut makes the disk cut itself when the n-th flush that has at
// least min pieces to flush arrives: the moment its cache holds the most.
func (d *recDisk) armFlushCut(n, min int) <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.cutAtFlush, d.cutMinimum = n, min
	return d.cutDone
}

// cut freezes the disk (if it has not cut itself) and returns its state;
// the disk never changes again.
func (d *recDisk) cut() diskCut {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.frozen = true
	return diskCut{size: d.size, durable: d.durable, pending: d.pending}
}

// unfreeze lets the requests blocked since the cut complete (dropped).
func (d *recDisk) unfreeze() {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.release:
	default:
		close(d.release)
	}
}

func (d *recDisk) snapshotStats() diskStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.stats
}

// writeImage writes what survives the cut to path, a sparse file: the
// durable image plus the pending pieces keep says survive, applied in
// order.
func (c diskCut) writeImage(path string, keep func(i int) bool) error {
	img := make(map[int64][]byte, len(c.durable))
	for k, v := range c.durable {
		img[k] = v
	}
	copied := map[int64]bool{}
	for i, p := range c.pending {
		if !keep(i) {
			continue
		}
		if !copied[p.block] {
			copied[p.block] = true
			nb := make([]byte, diskBlock)
			copy(nb, img[p.block])
			img[p.block] = nb
		}
		applyPiece(img, p)
	}
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	if err := f.Truncate(c.size); err != nil {
		f.Close()
		return err
	}
	for k, v := range img {
		if _, err := f.WriteAt(v, k*diskBlock); err != nil {
			f.Close()
			return err
		}
	}
	return f.Close()
}

// readImage reads an image file into a map of its non-zero 4 KiB blocks.
func readImage(path string) (map[int64][]byte, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, 0, err
	}
	img := map[int64][]byte{}
	zero := make([]byte, diskBlock)
	for off := int64(0); off < fi.Size(); {
		data, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if err != nil { // ENXIO: no data past off
			break
		}
		hole, err := unix.Seek(int(f.Fd()), data, unix.SEEK_HOLE)
		if err != nil {
			return nil, 0, err
		}
		for b := data / diskBlock; b*diskBlock < hole; b++ {
			blk := make([]byte, diskBlock)
			if _, err := f.ReadAt(blk, b*diskBlock); err != nil && !errors.Is(err, io.EOF) {
				return nil, 0, err
			}
			if !bytes.Equal(blk, zero) {
				img[b] = blk
			}
		}
		off = hole
	}
	return img, fi.Size(), nil
}

// diskServer is a FUSE mount serving one recDisk as the file "disk".
type diskServer struct {
	dir    string
	server *fuse.Server
	disk   *recDisk
}

func (s *diskServer) path() string { return filepath.Join(s.dir, "disk") }

// serveDisk mounts a FUSE filesystem at a new directory with the file
// "disk" served by d; the test's cleanup unmounts it (after releasing
// anything the disk holds).
func serveDisk(t *testing.T, d *recDisk) *diskServer {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "diskfs")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	root := &gofs.Inode{}
	sec := time.Hour
	server, err := gofs.Mount(dir, root, &gofs.Options{
		MountOptions: fuse.MountOptions{
			DirectMount: true, Name: "powercut", FsName: "powercut-disk",
			MaxWrite: 1 << 20, DisableXAttrs: true,
		},
		AttrTimeout:  &sec,
		EntryTimeout: &sec,
		OnAdd: func(ctx context.Context) {
			root.AddChild("disk", root.NewPersistentInode(ctx, d, gofs.StableAttr{Mode: syscall.S_IFREG, Ino: 2}), false)
		},
	})
	if err != nil {
		t.Skipf("cannot serve a disk over FUSE: %v", err)
	}
	// go-fuse opens /dev/fuse without O_CLOEXEC: every process this test
	// starts (the daemon among them) would keep the connection open, and
	// should this process die the loop device would wait for answers from
	// a server that is gone, forever, instead of failing.
	closeFUSEOnExec(t)
	s := &diskServer{dir: dir, server: server, disk: d}
	t.Cleanup(func() {
		d.unfreeze()
		if err := server.Unmount(); err != nil {
			_ = unix.Unmount(dir, unix.MNT_DETACH)
		}
	})
	return s
}

// closeFUSEOnExec sets FD_CLOEXEC on this process's descriptors of
// /dev/fuse.
func closeFUSEOnExec(t *testing.T) {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name())); err == nil && target == "/dev/fuse" {
			fd, _ := strconv.Atoi(e.Name())
			unix.CloseOnExec(fd)
		}
	}
}

// loopDev is an attached loop device.
type loopDev struct {
	dev     string // /dev/loopN
	name    string // loopN
	backing string // its backing file, as the kernel names it
}

// attachLoop attaches file to a free loop device (direct I/O if dio and
// the kernel takes it); the test's cleanup detaches it.
func attachLoop(t *testing.T, file string, dio bool) *loopDev {
	t.Helper()
	args := []string{"-f", "--show"}
	if dio {
		args = append(args, "--direct-io=on")
	}
	out, err := exec.Command("losetup", append(args, file)...).CombinedOutput()
	if err != nil {
		t.Fatalf("losetup %s: %v: %s", file, err, out)
	}
	dev := strings.TrimSpace(string(out))
	l := &loopDev{dev: dev, name: filepath.Base(dev)}
	waitFor(2*time.Second, func() bool { l.backing = l.sysfs("loop/backing_file"); return l.backing != "" })
	t.Cleanup(func() { l.detach(t) })
	if l.backing == "" {
		exec.Command("losetup", "-d", dev).Run()
		t.Fatalf("%s has no backing file after losetup", dev)
	}
	return l
}

func (l *loopDev) sysfs(name string) string {
	b, _ := os.ReadFile(filepath.Join("/sys/block", l.name, name))
	return strings.TrimSpace(string(b))
}

// detach detaches the loop device (once no one holds it) and waits until
// it has let go of its backing file. A device that no longer has our file
// is left alone: someone else may have attached it since.
func (l *loopDev) detach(t *testing.T) {
	t.Helper()
	ours := func() bool { return l.backing != "" && l.sysfs("loop/backing_file") == l.backing }
	if !ours() {
		return
	}
	if out, err := exec.Command("losetup", "-d", l.dev).CombinedOutput(); err != nil && ours() {
		t.Errorf("losetup -d %s: %v: %s", l.dev, err, out)
	}
	if !waitFor(20*time.Second, func() bool { return !ours() }) {
		t.Errorf("%s still has its backing file %s 20 s after losetup -d", l.dev, l.sysfs("loop/backing_file"))
	}
}

// mountExt4 mounts dev at a new directory; the test's cleanup unmounts it
// if it is still there.
func mountExt4(t *testing.T, dev, dir string, opts ...string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount(dev, dir, "ext4", 0, strings.Join(opts, ",")); err != nil {
		t.Fatalf("mount %s on %s: %v", dev, dir, err)
	}
	t.Cleanup(func() { unmountExt4(t, dir) })
}

// unmountExt4 unmounts dir, lazily if it stays busy for 5 s.
func unmountExt4(t *testing.T, dir string) {
	t.Helper()
	if !mountedAt(dir) {
		return
	}
	if waitFor(5*time.Second, func() bool { return unix.Unmount(dir, 0) == nil || !mountedAt(dir) }) {
		return
	}
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
		t.Errorf("lazy unmount of %s: %v", dir, err)
	}
}

// mountedAt reports whether something is mounted at dir.
func mountedAt(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	esc := strings.NewReplacer(" ", `\040`, "\t", `\011`, "\n", `\012`, `\`, `\134`).Replace(dir)
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 4 && f[4] == esc {
			return true
		}
	}
	return false
}

// loopUnavailable says why loop devices cannot be used here, or "".
func loopUnavailable() string {
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		return err.Error()
	}
	if _, err := exec.LookPath("losetup"); err != nil {
		return err.Error()
	}
	if _, err := exec.LookPath("mkfs.ext4"); err != nil {
		return err.Error()
	}
	fsys, _ := os.ReadFile("/proc/filesystems")
	if !strings.Contains(string(fsys), "\text4\n") {
		return "no ext4 in /proc/filesystems"
	}
	return ""
}

func requireLoop(t *testing.T) {
	t.Helper()
	requireFUSE(t)
	if why := loopUnavailable(); why != "" {
		if os.Getenv(requireFUSEEnv) == "1" {
			t.Fatalf("cannot use loop devices: %s (and %s=1)", why, requireFUSEEnv)
		}
		t.Skipf("cannot use loop devices: %s (set %s=1 to fail instead)", why, requireFUSEEnv)
	}
}

// mkfsImage makes a fresh ext4 image of size bytes and returns its blocks.
func mkfsImage(t *testing.T, size int64) map[int64][]byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "mkfs.img")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(size); err != nil {
		t.Fatal(err)
	}
	f.Close()
	// No discard (nothing to discard), everything initialised now rather
	// than by a lazy-init thread after the mount.
	out, err := exec.Command("mkfs.ext4", "-q", "-F", "-b", "4096",
		"-E", "nodiscard,lazy_itable_init=0,lazy_journal_init=0", p).CombinedOutput()
	if err != nil {
		t.Fatalf("mkfs.ext4: %v: %s", err, out)
	}
	img, _, err := readImage(p)
	if err != nil {
		t.Fatal(err)
	}
	os.Remove(p)
	return img
}

func (s diskStats) String() string {
	return fmt.Sprintf("%d writes (%d KiB), %d fsyncs (%d with no write before), %d reads, %d fallocates",
		s.writes, s.writeBytes>>10, s.fsyncs, s.emptyFsyncs, s.reads, s.allocs)
}

// TestPowerCutDisk pins what TestPowerCut relies on: the loop device over
// the FUSE-served disk has a volatile write cache and no FUA; fsync(2) of a
// file on the ext4 over it returns only after an FSYNC reached the disk
// with nothing written after it; and a cut keeps what was flushed and
// loses what was not.
func TestPowerCutDisk(t *testing.T) {
	requireLoop(t)
	const size = 64 << 20
	d := newRecDisk(size, mkfsImage(t, size))
	srv := serveDisk(t, d)
	loop := attachLoop(t, srv.path(), true)
	if wc, fua := loop.sysfs("queue/write_cache"), loop.sysfs("queue/fua"); wc != "write back" || fua != "0" {
		t.Fatalf("%s: write_cache %q, fua %q; want a volatile cache without FUA", loop.dev, wc, fua)
	}
	mnt := filepath.Join(t.TempDir(), "ext4")
	mountExt4(t, loop.dev, mnt, "commit=600") // no commit but the ones fsync asks for
	synced := bytes.Repeat([]byte("flushed "), 5000)
	f, err := os.Create(filepath.Join(mnt, "synced"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(synced); err != nil {
		t.Fatal(err)
	}
	before := d.snapshotStats()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	after := d.snapshotStats()
	f.Close()
	t.Logf("fsync(2): %d writes and %d FSYNCs reached the disk", after.writes-before.writes, after.fsyncs-before.fsyncs)
	if after.writes == before.writes || after.fsyncs == before.fsyncs || after.writesSinceFsync != 0 {
		t.Fatalf("fsync(2) returned after %d writes and %d FSYNCs, %d writes since the last: want both, the FSYNC last",
			after.writes-before.writes, after.fsyncs-before.fsyncs, after.writesSinceFsync)
	}
	// Written, and on the disk but not flushed (O_DIRECT: no page cache),
	// then cut: gone with "none", there with "all" (its blocks only: the
	// file's metadata is not on the disk yet).
	unsynced, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // aligned
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(unsynced)
	copy(unsynced, bytes.Repeat([]byte("volatile"), 512))
	g, err := os.OpenFile(filepath.Join(mnt, "unsynced"), os.O_WRONLY|os.O_CREATE|unix.O_DIRECT, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := g.Write(unsynced); err != nil {
		t.Fatal(err)
	}
	c := d.cut()
	d.unfreeze()
	g.Close()
	unmountExt4(t, mnt)
	loop.detach(t)
	if len(c.pending) == 0 {
		t.Fatal("an O_DIRECT write left nothing unflushed on the disk")
	}
	for _, mode := range []string{"none", "all"} {
		img := filepath.Join(t.TempDir(), "image")
		if err := c.writeImage(img, func(int) bool { return mode == "all" }); err != nil {
			t.Fatal(err)
		}
		raw, err := os.ReadFile(img)
		if err != nil {
			t.Fatal(err)
		}
		if has := bytes.Contains(raw, unsynced); has != (mode == "all") {
			t.Errorf("image %q: holds the unflushed write: %v", mode, has)
		}
		l := attachLoop(t, img, false)
		m := filepath.Join(t.TempDir(), "ext4")
		mountExt4(t, l.dev, m)
		if b, err := os.ReadFile(filepath.Join(m, "synced")); err != nil || !bytes.Equal(b, synced) {
			t.Errorf("image %q: the fsynced file: %d bytes, %v", mode, len(b), err)
		}
		if _, err := os.Stat(filepath.Join(m, "unsynced")); err == nil {
			t.Errorf("image %q: the file created after the last flush is there", mode)
		}
		unmountExt4(t, m)
		l.detach(t)
	}
}
