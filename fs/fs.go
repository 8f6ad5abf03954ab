// Package fs presents a store as a FUSE filesystem: the root holds one
// directory per scope and a .stats file; a scope directory holds one
// regular file per live key and a generated _index.json. This package is
// FUSE glue only: every decision about keys, quotas, TTLs and integrity is
// the store's, and store errors become errnos in errno.go.
package fs

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/iriskvfs/iriskvfs/store"
)

// Options configure the filesystem.
type Options struct {
	// UID and GID own every file and directory unless an entry says
	// otherwise (chown by root).
	UID, GID uint32
	// ReadOnly refuses every change with EROFS.
	ReadOnly bool
	// CacheTimeout is the longest the kernel may cache a name or its
	// attributes; an entry's own expiry shortens it.
	CacheTimeout time.Duration
	// MountPoint is where the filesystem is mounted; _index.json reports
	// paths under it.
	MountPoint string
	Logger     *slog.Logger
	// Heal, when set, is asked to restore scope/key after a lookup found it
	// missing or an open found it corrupt; if it returns true the operation
	// is retried once. The daemon uses it to keep the canonical
	// instruction sets present.
	Heal func(scope, key string) bool
	// Stats, when set, produces the document .stats shows (default: the
	// store's stats).
	Stats func() (any, error)
}

// FS is the state shared by every node of one mount.
type FS struct {
	store   *store.Store
	opts    Options
	log     *slog.Logger
	notes   *notifier
	scopes  map[string]*gofs.Inode // set in Root.OnAdd, read-only after
	mounted time.Time
	unwatch func()
	pins    pinnedValues // values kept for no-open reads

	// direntsServed counts names handed to the kernel in directory
	// listings: a listing the kernel serves from its cache adds none.
	direntsServed atomic.Int64
	// device is the mount's device number as mountinfo writes it
	// ("major:minor"), once mounted; "" disables callerHolds.
	device atomic.Pointer[string]
	// keyInos numbers key inodes (keyFileAttr).
	keyInos atomic.Uint64
}

// keyInoBase starts the inode numbers of key files, below go-fuse's
// automatic ones (from 1<<63, for the other nodes): 2^62 numbers apart.
const keyInoBase = 1 << 62

// keyFileAttr is the identity of a new key inode. The inode number is
// ours: go-fuse's automatic numbering takes its identity table's lock
// twice per inode and probes the table (a cache miss in a table of 100k
// nodes) to skip numbers in use, which ours never are.
func (fs *FS) keyFileAttr() gofs.StableAttr {
	return gofs.StableAttr{Mode: syscall.S_IFREG, Ino: keyInoBase + fs.keyInos.Add(1)}
}

// heldByCaller reports whether the process that sent the request in ctx
// still has a descriptor open on node ino of this mount (callerfds.go).
func (fs *FS) heldByCaller(ctx context.Context, ino uint64) bool {
	dev := fs.device.Load()
	return dev != nil && callerHolds(callerPid(ctx), *dev, ino)
}

// NewRoot returns the root node of a filesystem over s.
func NewRoot(s *store.Store, opts Options) *Root {
	if opts.CacheTimeout == 0 {
		opts.CacheTimeout = time.Hour
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	f := &FS{store: s, opts: opts, log: opts.Logger, notes: newNotifier(), mounted: time.Now()}
	return &Root{fs: f}
}

// MountOptions are the go-fuse options that go with a root from NewRoot.
func MountOptions(storeDir string, opts Options, allowOther, directMount bool) *gofs.Options {
	zero := time.Duration(0)
	o := &gofs.Options{
		// Handlers set the timeouts of every answer they want cached. The
		// fallbacks must be zero: go-fuse replaces a zero timeout in an
		// answer with these, so with a non-zero fallback "do not cache"
		// could not be said at all (and one nanosecond, which the kernel
		// rounds up to a jiffy, still caches for up to ~8 ms).
		EntryTimeout:    &zero,
		AttrTimeout:     &zero,
		NegativeTimeout: &zero,
		UID:             opts.UID,
		GID:             opts.GID,
	}
	o.MountOptions = fuse.MountOptions{
		Name:        "iriskvfs",
		FsName:      storeDir,
		AllowOther:  allowOther,
		DirectMount: directMount,
		MaxWrite:    1 << 20,
		// No IgnoreSecurityLabels and no EnableAcl: security.* and the
		// POSIX ACL names reach our nodes, which answer ENOTSUP (see
		// absentXattr); go-fuse's shortcut would answer ENODATA.
		// open(O_TRUNC) arrives as an OPEN carrying O_TRUNC, staged in the
		// write handle like any write. Without it the kernel sends a
		// SETATTR(size 0) with no file handle, which is truncate(2) on a
		// path: it would publish an empty value at open, before the
		// writer's data, and readers would see it.
		ExtraCapabilities: fuse.CAP_ATOMIC_O_TRUNC,
	}
	if allowOther {
		o.MountOptions.Options = append(o.MountOptions.Options, "default_permissions")
	}
	if opts.ReadOnly {
		o.MountOptions.Options = append(o.MountOptions.Options, "ro")
	}
	return o
}

// Close stops watching the store and the background notifier.
func (r *Root) Close() {
	if r.fs.unwatch != nil {
		r.fs.unwatch()
	}
	r.fs.notes.close()
	r.fs.pins.closeAll()
}

// storeChanged makes the kernel forget a key that changed in the store, by
// whatever way (this mount, the admin socket, a prune): the next access
// looks it up again and finds the new value, or none.
func (f *FS) storeChanged(scope, key string) {
	dir := f.scopes[scope]
	if dir == nil {
		return
	}
	sd := dir.Operations().(*scopeDir)
	sd.changed()
	f.notes.post(func() {
		sd.invalidateListing()
		if f.kernelShowsCurrent(dir, scope, key) {
			return
		}
		_ = dir.NotifyEntry(key)
	})
}

// kernelShowsCurrent reports whether the inode this mount has for scope/key
// already shows the key's current entry, attributes included: a file this
// mount has just created and published. Invalidating its name would only
// make the kernel forget the inode, and the next lookup would give the
// unchanged file a new inode number (and drop its cached pages).
func (f *FS) kernelShowsCurrent(dir *gofs.Inode, scope, key string) bool {
	ch := dir.GetChild(key)
	if ch == nil {
		return false
	}
	kf, ok := ch.Operations().(*keyFile)
	if !ok {
		return false
	}
	e, err := f.store.Lookup(scope, key)
	if err != nil {
		return false
	}
	return kf.showsExactly(&e)
}

// noCache is the timeout that tells the kernel not to cache an answer (see
// MountOptions: go-fuse keeps a zero timeout because its fallbacks are zero).
const noCache = time.Duration(0)

// timeoutUntil is how long the kernel may cache something that dies at
// expires (zero: never).
func (f *FS) timeoutUntil(expires time.Time) time.Duration {
	d := f.opts.CacheTimeout
	if !expires.IsZero() {
		left := expires.Sub(f.store.Now())
		if left < noCache {
			left = noCache
		}
		if left < d {
			d = left
		}
	}
	return d
}

func (f *FS) errno(err error) syscall.Errno { return toErrno(f.log, err) }

// heal asks Options.Heal to restore scope/key after err, and reports
// whether the caller should retry.
func (f *FS) heal(scope, key string, err error) bool {
	if f.opts.Heal == nil || !(errors.Is(err, store.ErrNotFound) || errors.Is(err, store.ErrIntegrity)) {
		return false
	}
	return f.opts.Heal(scope, key)
}

// notifier sends cache invalidations to the kernel from its own goroutine:
// a notification sent from inside a FUSE request on the same inode can
// deadlock against the kernel's locks.
type notifier struct {
	mu      sync.Mutex
	queue   []func()
	stopped bool
	wake    chan struct{} // never closed; a pending wake-up is enough
	stop    chan struct{}
	done    chan struct{}
}

func newNotifier() *notifier {
	n := &notifier{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go n.loop()
	return n
}

func (n *notifier) post(fn func()) {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return
	}
	n.queue = append(n.queue, fn)
	n.mu.Unlock()
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) drain() {
	for {
		n.mu.Lock()
		q := n.queue
		n.queue = nil
		n.mu.Unlock()
		if len(q) == 0 {
			return
		}
		for _, fn := range q {
			fn()
		}
	}
}

func (n *notifier) loop() {
	defer close(n.done)
	for {
		select {
		case <-n.wake:
			n.drain()
		case <-n.stop:
			return
		}
	}
}

// close stops the notifier, dropping what is queued: after unmount there is
// no kernel cache to invalidate.
func (n *notifier) close() {
	n.mu.Lock()
	if n.stopped {
		n.mu.Unlock()
		return
	}
	n.stopped = true
	n.mu.Unlock()
	close(n.stop)
	<-n.done
}

// invalidateName makes the kernel forget parent/name (and its cached
// attributes) so the next access looks it up again.
func (f *FS) invalidateName(parent *gofs.Inode, name string) {
	f.notes.post(func() { _ = parent.NotifyEntry(name) })
}

// fixedEntry answers a lookup of one of the fixed nodes (a scope, .stats,
// _index.json) with the attributes and attribute timeout its own Getattr
// gives: go-fuse's default lookup would keep the attributes but cache them
// for the mount's timeout, so a virtual file's size would go stale.
func (f *FS) fixedEntry(ctx context.Context, ch *gofs.Inode, out *fuse.EntryOut) syscall.Errno {
	var a fuse.AttrOut
	if ga, ok := ch.Operations().(gofs.NodeGetattrer); ok {
		if errno := ga.Getattr(ctx, nil, &a); errno != 0 {
			return errno
		}
	}
	out.Attr = a.Attr
	out.SetEntryTimeout(f.opts.CacheTimeout)
	out.SetAttrTimeout(a.Timeout())
	return 0
}

// dirAttr fills the attributes of a directory.
func (f *FS) dirAttr(out *fuse.Attr) {
	out.Mode = syscall.S_IFDIR | 0o755
	out.Nlink = 2
	out.Uid, out.Gid = f.opts.UID, f.opts.GID
	out.SetTimes(&f.mounted, &f.mounted, &f.mounted) // the tree dates from the mount
}

// statfs fills out for a quota of total bytes of which used are used.
func statfs(out *fuse.StatfsOut, total, used, keys int64) {
	const bsize = 4096
	free := total - used
	if free < 0 {
		free = 0
	}
	out.Bsize = bsize
	out.Frsize = bsize
	out.Blocks = uint64((total + bsize - 1) / bsize)
	out.Bfree = uint64(free / bsize)
	out.Bavail = out.Bfree
	out.Files = uint64(keys)
	out.Ffree = 1 << 20
	out.NameLen = store.MaxKeyLen
}
