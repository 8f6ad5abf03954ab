package fs

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/store"
)

// FSType is the filesystem type /proc/mounts, df -T and findmnt show.
const FSType = "fuse.iriskvfs"

// MountConfig is how to mount.
type MountConfig struct {
	Options
	AllowOther bool
	Debug      bool
	// wrapRaw, when set, wraps the filesystem go-fuse serves (tests count
	// the requests that reach it).
	wrapRaw func(fuse.RawFileSystem) fuse.RawFileSystem
}

// Mount is a mounted filesystem.
type Mount struct {
	Point  string
	server *fuse.Server
	root   *Root
}

// Mount checks the mount point (clearing a stale mount left by a killed
// daemon), mounts s there and starts serving. As root it mounts directly;
// otherwise through fusermount3.
func MountStore(point string, s *store.Store, cfg MountConfig) (*Mount, error) {
	if _, err := os.Stat("/dev/fuse"); err != nil {
		return nil, fmt.Errorf("/dev/fuse is not available (%v): load the fuse module, or give the container --device /dev/fuse", err)
	}
	if err := PrepareMountPoint(point); err != nil {
		return nil, err
	}
	cfg.MountPoint = point
	root := NewRoot(s, cfg.Options)
	opts := MountOptions(s.Dir(), cfg.Options, cfg.AllowOther, os.Geteuid() == 0)
	opts.Debug = cfg.Debug
	if cfg.ReadOnly && opts.DirectMount {
		// A direct mount passes "ro" to the superblock only; fusermount3
		// also makes the mount itself read-only, which /proc/mounts shows.
		opts.DirectMountFlags = syscall.MS_NOSUID | syscall.MS_NODEV | syscall.MS_RDONLY
	}
	server, err := serve(point, root, opts, cfg.wrapRaw)
	if err != nil {
		root.Close()
		if os.Geteuid() != 0 {
			if _, lerr := exec.LookPath("fusermount3"); lerr != nil {
				return nil, fmt.Errorf("mount %s: %w (not root, and fusermount3 is not installed: apt-get install fuse3)", point, err)
			}
		}
		return nil, fmt.Errorf("mount %s: %w", point, err)
	}
	dev := mountDevice(point)
	root.fs.device.Store(&dev)
	return &Mount{Point: point, server: server, root: root}, nil
}

// serve is gofs.Mount, with the raw filesystem wrapped by wrap if set.
func serve(point string, root *Root, opts *gofs.Options, wrap func(fuse.RawFileSystem) fuse.RawFileSystem) (*fuse.Server, error) {
	raw := gofs.NewNodeFS(root, opts)
	if wrap != nil {
		raw = wrap(raw)
	}
	server, err := fuse.NewServer(raw, point, &opts.MountOptions)
	if err != nil {
		return nil, err
	}
	go server.Serve()
	if err := server.WaitMount(); err != nil {
		return nil, err
	}
	return server, nil
}

// Wait blocks until the filesystem is unmounted.
func (m *Mount) Wait() { m.server.Wait() }

// Unmount unmounts and stops serving; a busy mount is left mounted and the
// error says so.
func (m *Mount) Unmount() error {
	if err := m.server.Unmount(); err != nil {
		return fmt.Errorf("unmount %s: %w", m.Point, err)
	}
	m.root.Close()
	return nil
}

// Settle waits (up to a second) until the kernel has been told of every
// store change made so far: the invalidations go out from their own
// goroutine, after the change returned. The admin socket settles before it
// answers, so that what a command changed shows through the mount at once.
func (m *Mount) Settle() {
	done := make(chan struct{})
	m.root.fs.notes.post(func() { close(done) })
	select {
	case <-done:
	case <-time.After(time.Second): // stopped, or stuck behind a kernel lock
	}
}

// PrepareMountPoint makes sure point is an empty-enough directory to mount
// on: it creates it if missing, and lazily unmounts a dead FUSE mount
// ("transport endpoint is not connected") that a killed daemon left.
func PrepareMountPoint(point string) error {
	_, err := os.Stat(point)
	if err == nil && IsDeadMount(point) {
		err = &os.PathError{Op: "statfs", Path: point, Err: syscall.ENOTCONN}
	}
	switch {
	case err == nil:
	case errors.Is(err, syscall.ENOTCONN):
		if uerr := LazyUnmount(point); uerr != nil {
			return fmt.Errorf("%s is a dead mount and could not be cleared: %w", point, uerr)
		}
	case errors.Is(err, os.ErrNotExist):
		if err := os.MkdirAll(point, 0o755); err != nil {
			return err
		}
	default:
		return fmt.Errorf("mount point %s: %w", point, err)
	}
	if mounted, fstype := IsMounted(point); mounted {
		return fmt.Errorf("%s is already mounted (%s): unmount it first", point, fstype)
	}
	fi, err := os.Stat(point)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", point, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("mount point %s is not a directory", point)
	}
	return nil
}

// IsDeadMount reports whether point is a FUSE mount whose server is gone
// ("transport endpoint is not connected"). stat cannot tell: the kernel
// answers it from the root's cached attributes, without asking the server,
// for as long as their timeout (an hour); statfs always asks. A server that
// is there but does not answer is not dead: after 2 s it gives up (leaving
// the probe blocked until the server answers or the connection is aborted).
func IsDeadMount(point string) bool {
	res := make(chan error, 1)
	go func() {
		var st syscall.Statfs_t
		res <- syscall.Statfs(point, &st)
	}()
	select {
	case err := <-res:
		return errors.Is(err, syscall.ENOTCONN)
	case <-time.After(2 * time.Second):
		return false
	}
}

// AbortConnection aborts the FUSE connection of the mount at point
// (umount2 with MNT_FORCE, root only): every request waiting on it fails,
// and the mount goes, or, while files are open on it, is left dead for
// LazyUnmount. It is the way out when a killed daemon cannot finish dying:
// a thread of it is blocked in the kernel sending an invalidation for a
// directory that a request waiting for the daemon holds locked, and the
// connection stays open while that thread lives, so neither the waiting
// request nor the thread ever ends.
func AbortConnection(point string) error {
	err := syscall.Unmount(point, syscall.MNT_FORCE)
	if errors.Is(err, syscall.EBUSY) {
		return nil // still mounted (files are open on it), but aborted
	}
	return err
}

// Unmount unmounts the filesystem at point from outside its server (as
// umount(8) or fusermount3 -u would): the server sees it go and stops. A
// busy mount (a process has its working directory or a file open in it)
// stays mounted and the error is EBUSY.
func Unmount(point string) error {
	if os.Geteuid() == 0 {
		if err := syscall.Unmount(point, 0); err != nil {
			return &os.PathError{Op: "unmount", Path: point, Err: err}
		}
		return nil
	}
	out, err := exec.Command("fusermount3", "-u", point).CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if strings.Contains(msg, "busy") {
			return &os.PathError{Op: "unmount", Path: point, Err: syscall.EBUSY}
		}
		return fmt.Errorf("fusermount3 -u: %v: %s", err, msg)
	}
	return nil
}

// LazyUnmount detaches the mount at point (MNT_DETACH as root, else
// fusermount3 -uz).
func LazyUnmount(point string) error {
	if os.Geteuid() == 0 {
		return syscall.Unmount(point, syscall.MNT_DETACH)
	}
	out, err := exec.Command("fusermount3", "-u", "-z", point).CombinedOutput()
	if err != nil {
		return fmt.Errorf("fusermount3 -uz: %v: %s", err, strings.TrimSpace(string(out)))
	}
	return nil
}

// IsMounted reports whether something is mounted exactly at point, and
// its type.
func IsMounted(point string) (bool, string) {
	m, ok := FindMount(point)
	return ok, m.Type
}

// MountInfo is one line of /proc/self/mountinfo.
type MountInfo struct {
	Point  string
	Type   string
	Source string
}

// FindMount returns the mount at point, if any.
func FindMount(point string) (MountInfo, bool) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return MountInfo{}, false
	}
	defer f.Close()
	var found MountInfo
	ok := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		// id parent maj:min root point options [optional...] - type source superopts
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 || unescapeMount(fields[4]) != point {
			continue
		}
		for i := 6; i < len(fields)-2; i++ {
			if fields[i] == "-" {
				found = MountInfo{Point: point, Type: fields[i+1], Source: unescapeMount(fields[i+2])}
				ok = true // the last one wins: it is the one on top
				break
			}
		}
	}
	return found, ok
}

// unescapeMount undoes the octal escapes (\040 for space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			var v byte
			valid := true
			for _, c := range []byte(s[i+1 : i+4]) {
				if c < '0' || c > '7' {
					valid = false
					break
				}
				v = v*8 + (c - '0')
			}
			if valid {
				b.WriteByte(v)
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}
