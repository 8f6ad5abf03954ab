package fs

// Model-based random testing through a real mount.
//
// A seeded generator makes a sequence of operations per client: open
// sessions (O_CREAT/O_TRUNC/O_APPEND/O_EXCL, writes at offsets, appends,
// ftruncate, fsync, reading back what is staged, then close), truncate(2),
// rename (over existing keys, to bad names, across scopes), unlink, the
// content type and TTL xattrs, TTL expiry, reads, listings and names the
// contract refuses. Each client runs its sequence against the mount and, in
// the same order, against an in-memory model of DESIGN.md ("The mount"):
// values published at close (or fsync, or truncate(2)), quotas per scope
// (EDQUOT, EFBIG, the old value kept), errnos as listed, metadata kept
// across rewrites and renames. Each client has a scope of its own (its own
// quota), so the comparison is exact.
//
// Beside that, every client also writes and reads a few shared keys
// (self-describing values, checkValue), and reader goroutines read every
// key all the time: what they see must be a value that was published for
// that key (never a mix, never one whose close failed), with fstat's size
// equal to what read returned.
//
// A divergence fails the test with the seed and, for a client's own keys, a
// reproducer shrunk by delta debugging (replayed alone on a fresh mount),
// printed as a Go literal (paste it into modelRegressions) and as a shell
// script.
//
// IRISKVFS_MODEL_SEED replays a seed; IRISKVFS_MODEL_TIME (a duration, e.g.
// 2m) runs longer than the few seconds of `go test`; IRISKVFS_MODEL_CLIENTS
// sets the number of clients (4).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/quota"
)

const (
	modelSeedEnv    = "IRISKVFS_MODEL_SEED"
	modelTimeEnv    = "IRISKVFS_MODEL_TIME"
	modelClientsEnv = "IRISKVFS_MODEL_CLIENTS"

	modelQuota    = 128 << 10 // each client's scope
	modelScopeTTL = "1h0m0s"  // every scope's TTL, as user.iris.ttl shows it
	modelShared   = "shared"
)

// modelConfig is the policy of a model run: a scope per client, and one
// they share.
func modelConfig(clients int) string {
	var b strings.Builder
	b.WriteString("scopes:\n")
	for i := 0; i < clients; i++ {
		fmt.Fprintf(&b, "  c%d: {quota: %dKB, ttl: 1h}\n", i, modelQuota>>10)
	}
	fmt.Fprintf(&b, "  %s: {quota: 64MB, ttl: 1h}\n", modelShared)
	return b.String()
}

// mkind is what an operation does.
type mkind int

const (
	mSession   mkind = iota + 1 // open Key with Flags, run Steps, close
	mTruncate                   // truncate(Key, Size)
	mRename                     // rename(Key, To) in the client's scope
	mXRename                    // rename(Key, shared/To): EXDEV
	mUnlink                     // unlink(Key)
	mSetCT                      // setxattr user.iris.content_type = Val
	mSetTTL                     // setxattr user.iris.ttl = Val
	mExpire                     // setxattr user.iris.ttl = 1s, wait, check it is gone
	mRead                       // open, read, fstat, close; xattrs
	mList                       // readdir, _index.json, .stats, statfs of the scope
	mBadCreate                  // open(Key, O_CREAT) of a name the rules refuse
	mNotFile                    // mkdir / symlink / link / write _index.json: EPERM
	mShPut                      // shared/Key = a self-describing value, by Val ("trunc", "rename", "chunked")
	mShRead                     // read shared/Key: a complete, published value
	mShUnlink                   // unlink shared/Key (ENOENT allowed)
)

var mkindNames = map[mkind]string{
	mSession: "mSession", mTruncate: "mTruncate", mRename: "mRename", mXRename: "mXRename",
	mUnlink: "mUnlink", mSetCT: "mSetCT", mSetTTL: "mSetTTL", mExpire: "mExpire", mRead: "mRead",
	mList: "mList", mBadCreate: "mBadCreate", mNotFile: "mNotFile", mShPut: "mShPut",
	mShRead: "mShRead", mShUnlink: "mShUnlink",
}

func (k mkind) String() string { return mkindNames[k] }

// mflag are a session's open flags (O_RDWR is always given).
type mflag int

const (
	fCreat mflag = 1 << iota
	fTrunc
	fAppend
	fExcl
)

func (f mflag) String() string {
	var parts []string
	for _, x := range []struct {
		f mflag
		n string
	}{{fCreat, "fCreat"}, {fTrunc, "fTrunc"}, {fAppend, "fAppend"}, {fExcl, "fExcl"}} {
		if f&x.f != 0 {
			parts = append(parts, x.n)
		}
	}
	if len(parts) == 0 {
		return "0"
	}
	return strings.Join(parts, "|")
}

func (f mflag) open() int {
	o := unix.O_RDWR
	if f&fCreat != 0 {
		o |= unix.O_CREAT
	}
	if f&fTrunc != 0 {
		o |= unix.O_TRUNC
	}
	if f&fAppend != 0 {
		o |= unix.O_APPEND
	}
	if f&fExcl != 0 {
		o |= unix.O_EXCL
	}
	return o
}

// skind is one step of a session.
type skind int

const (
	sPwrite   skind = iota + 1 // pwrite(gen(Tag, N), Off)
	sWrite                     // write(gen(Tag, N)) at the descriptor's offset
	sFtrunc                    // ftruncate(N)
	sFsync                     // fsync: publishes what is staged
	sReadBack                  // pread the whole staged value back
)

var skindNames = map[skind]string{sPwrite: "sPwrite", sWrite: "sWrite", sFtrunc: "sFtrunc", sFsync: "sFsync", sReadBack: "sReadBack"}

type mstep struct {
	K   skind
	Off int64
	N   int64
	Tag string
}

// mop is one operation. Keys are in the client's own scope except for the
// mSh* operations, which name keys of the shared scope.
type mop struct {
	K     mkind
	Key   string
	To    string
	Flags mflag
	Steps []mstep
	Size  int64
	Val   string
}

// gen is the content of a write: lines "TAG:0000000\n", cut to n bytes.
// Every 12-byte line names its write and its place, so a value made of
// the wrong pieces shows which. (The shell reproducer makes the same bytes.)
func gen(tag string, n int64) []byte {
	var b bytes.Buffer
	for i := 0; int64(b.Len()) < n; i++ {
		fmt.Fprintf(&b, "%s:%07d\n", tag, i)
	}
	return b.Bytes()[:n]
}

// ---------------------------------------------------------------------------
// The generator.

var (
	modelKeys     = []string{"k0", "k1", "k2", "k3", "doc.md", "data.bin"}
	modelBadNames = []string{"_x", ".hidden", "-dash", "a b", "caf\u00e9", "a:b", strings.Repeat("n", 256)}
	modelCTs      = []string{"text/plain", "application/json", "text/x-model; charset=utf-8", "application/vnd.iris+json"}
	modelTTLs     = []string{"6h", "90m", "2d", "0", "30m"}
	modelShKeys   = []string{"s0", "s1", "s2"}
)

type mgen struct {
	rng    *rand.Rand
	client int
	n      int
}

func newGen(seed uint64, client int) *mgen {
	return &mgen{rng: rand.New(rand.NewPCG(seed, uint64(client)+1)), client: client}
}

func (g *mgen) key() string { return modelKeys[g.rng.IntN(len(modelKeys))] }

func (g *mgen) size() int64 {
	switch r := g.rng.IntN(100); {
	case r < 10:
		return 0
	case r < 70:
		return 1 + g.rng.Int64N(4<<10)
	case r < 95:
		return 1 + g.rng.Int64N(40<<10)
	default: // past the scope's whole quota: EFBIG
		return modelQuota - 8<<10 + g.rng.Int64N(24<<10)
	}
}

func (g *mgen) next() mop {
	g.n++
	tag := func(s int) string { return fmt.Sprintf("c%d.%d.%d", g.client, g.n, s) }
	r := g.rng.IntN(1000)
	switch {
	case r < 330:
		op := mop{K: mSession, Key: g.key()}
		if g.rng.IntN(10) != 0 {
			op.Flags |= fCreat
		}
		if g.rng.IntN(10) < 4 {
			op.Flags |= fTrunc
		}
		if g.rng.IntN(10) < 2 {
			op.Flags |= fAppend
		}
		if op.Flags&fCreat != 0 && g.rng.IntN(10) == 0 {
			op.Flags |= fExcl
		}
		for s := range g.rng.IntN(5) {
			var st mstep
			switch r := g.rng.IntN(100); {
			case r < 40:
				st = mstep{K: sWrite, N: 1 + g.rng.Int64N(12<<10), Tag: tag(s)}
			case r < 70:
				st = mstep{K: sPwrite, Off: g.size() / 2, N: 1 + g.rng.Int64N(12<<10), Tag: tag(s)}
			case r < 85:
				st = mstep{K: sFtrunc, N: g.size()}
			case r < 93:
				st = mstep{K: sReadBack}
			default:
				st = mstep{K: sFsync}
			}
			if st.N > 0 && (st.K == sWrite || st.K == sPwrite) && g.rng.IntN(12) == 0 {
				st.N = 20<<10 + g.rng.Int64N(60<<10) // large: quota trouble
			}
			op.Steps = append(op.Steps, st)
		}
		return op
	case r < 390:
		return mop{K: mTruncate, Key: g.key(), Size: g.size()}
	case r < 470:
		op := mop{K: mRename, Key: g.key(), To: g.key()}
		switch g.rng.IntN(20) {
		case 0:
			op.To = "_index.json"
		case 1:
			op.To = modelBadNames[g.rng.IntN(len(modelBadNames))]
		}
		return op
	case r < 490:
		return mop{K: mXRename, Key: g.key(), To: fmt.Sprintf("x-c%d", g.client)}
	case r < 550:
		return mop{K: mUnlink, Key: g.key()}
	case r < 590:
		return mop{K: mSetCT, Key: g.key(), Val: modelCTs[g.rng.IntN(len(modelCTs))]}
	case r < 630:
		return mop{K: mSetTTL, Key: g.key(), Val: modelTTLs[g.rng.IntN(len(modelTTLs))]}
	case r < 640:
		return mop{K: mExpire, Key: g.key()}
	case r < 790:
		return mop{K: mRead, Key: g.key()}
	case r < 840:
		return mop{K: mList}
	case r < 860:
		return mop{K: mBadCreate, Key: modelBadNames[g.rng.IntN(len(modelBadNames))]}
	case r < 870:
		return mop{K: mNotFile, Key: g.key(), Val: []string{"mkdir", "symlink", "link", "index"}[g.rng.IntN(4)]}
	case r < 940:
		return mop{K: mShPut, Key: modelShKeys[g.rng.IntN(len(modelShKeys))], Size: 32 + g.rng.Int64N(48<<10),
			Val: []string{"trunc", "rename", "chunked"}[g.rng.IntN(3)]}
	case r < 990:
		return mop{K: mShRead, Key: modelShKeys[g.rng.IntN(len(modelShKeys))]}
	default:
		return mop{K: mShUnlink, Key: modelShKeys[g.rng.IntN(len(modelShKeys))]}
	}
}

// ---------------------------------------------------------------------------
// The model and the executor.

// mval is the model of one live key.
type mval struct {
	data []byte
	ct   string // "" while the content type is the guessed one
	ttl  string // user.iris.ttl: the scope's unless set
}

// registry records what was published, for the readers' checks: by path,
// the SHA-256 of every value published there (own keys), or the
// (writer, seq) of every shared value whose publication returned 0.
type registry struct {
	skews  atomic.Int64 // shared reads whose fstat size differed (see TestModel)
	mu     sync.Mutex
	hashes map[string]map[[32]byte]bool
	shared map[string]map[[2]int]bool
}

func newRegistry() *registry {
	return &registry{hashes: map[string]map[[32]byte]bool{}, shared: map[string]map[[2]int]bool{}}
}

func (r *registry) publish(path string, data []byte) {
	if r == nil {
		return
	}
	h := sha256.Sum256(data)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.hashes[path] == nil {
		r.hashes[path] = map[[32]byte]bool{}
	}
	r.hashes[path][h] = true
}

func (r *registry) publishShared(path string, writer, seq int) {
	if r == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.shared[path] == nil {
		r.shared[path] = map[[2]int]bool{}
	}
	r.shared[path][[2]int{writer, seq}] = true
}

func (r *registry) published(path string, h [32]byte) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.hashes[path][h]
}

func (r *registry) publishedShared(path string, writer, seq int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.shared[path][[2]int{writer, seq}]
}

// mclient runs one client's operations against the mount and the model.
type mclient struct {
	id     int
	scope  string
	dir    string // the scope's directory in the mount
	shared string // the shared scope's directory
	root   string // the mount point
	keys   map[string]*mval
	reg    *registry // nil when replaying alone
	seq    int       // shared values written
	// diag describes what the store itself holds for a key, for reports.
	diag func(scope, key string) string
}

func newClient(root string, id int, reg *registry) *mclient {
	scope := fmt.Sprintf("c%d", id)
	return &mclient{id: id, scope: scope, dir: filepath.Join(root, scope), shared: filepath.Join(root, modelShared),
		root: root, keys: map[string]*mval{}, reg: reg}
}

func (c *mclient) path(key string) string { return filepath.Join(c.dir, key) }

func (c *mclient) usage() int64 {
	var n int64
	for _, v := range c.keys {
		n += int64(len(v.data))
	}
	return n
}

// admit is the quota decision for key growing to size.
func (c *mclient) admit(key string, size int64) syscall.Errno {
	if size > modelQuota {
		return syscall.EFBIG
	}
	used := c.usage()
	if v := c.keys[key]; v != nil {
		used -= int64(len(v.data))
	}
	if used+size > modelQuota {
		return syscall.EDQUOT
	}
	return 0
}

// set publishes data as key's value: a rewrite keeps the metadata.
func (c *mclient) set(key string, data []byte) {
	v := c.keys[key]
	if v == nil {
		v = &mval{ttl: modelScopeTTL}
		c.keys[key] = v
	}
	v.data = bytes.Clone(data)
	c.reg.publish(c.path(key), data)
}

func errnoOf(err error) syscall.Errno {
	if err == nil {
		return 0
	}
	var e syscall.Errno
	if errors.As(err, &e) {
		return e
	}
	return syscall.Errno(0xffff)
}

func errName(e syscall.Errno) string {
	if e == 0 {
		return "ok"
	}
	return errnoName(e)
}

// wantErr compares errnos and returns a divergence.
func wantErr(what string, got, want syscall.Errno) string {
	if got == want {
		return ""
	}
	return fmt.Sprintf("%s: got %s, the model says %s", what, errName(got), errName(want))
}

func resize(b []byte, n int64) []byte {
	if int64(len(b)) >= n {
		return b[:n]
	}
	return append(b, make([]byte, n-int64(len(b)))...)
}

// writeAt applies a write of p at off to b.
func writeAt(b []byte, p []byte, off int64) []byte {
	if end := off + int64(len(p)); end > int64(len(b)) {
		b = resize(b, end)
	}
	copy(b[off:], p)
	return b
}

func describe(b []byte) string {
	if len(b) <= 40 {
		return fmt.Sprintf("%q (%d bytes)", b, len(b))
	}
	h := sha256.Sum256(b)
	return fmt.Sprintf("%q…%q (%d bytes, sha256 %x)", b[:24], b[len(b)-12:], len(b), h[:6])
}

func diffBytes(got, want []byte) string {
	i := 0
	for i < len(got) && i < len(want) && got[i] == want[i] {
		i++
	}
	return fmt.Sprintf("got %s, the model says %s; first difference at byte %d", describe(got), describe(want), i)
}

// exec runs op against the mount and the model and returns a divergence,
// or "".
func (c *mclient) exec(op mop) string {
	switch op.K {
	case mSession:
		return c.session(op)
	case mTruncate:
		v := c.keys[op.Key]
		want := syscall.ENOENT
		if v != nil {
			want = c.admit(op.Key, op.Size)
		}
		if d := wantErr("truncate", errnoOf(unix.Truncate(c.path(op.Key), op.Size)), want); d != "" {
			return d
		}
		if want == 0 {
			c.set(op.Key, resize(bytes.Clone(v.data), op.Size))
		}
		// With a reader holding the file open, the truncate leaves it its
		// inode and invalidates the name in the background (README, known
		// limits): stat may show the old size for a moment.
		deadline := time.Now().Add(2 * time.Second)
		for {
			d := c.statSize(op.Key)
			if d == "" || time.Now().After(deadline) {
				return d
			}
			time.Sleep(time.Millisecond)
		}
	case mRename:
		v := c.keys[op.Key]
		want := syscall.Errno(0)
		switch {
		case v == nil:
			want = syscall.ENOENT
		case op.To == indexName:
			want = syscall.EPERM
		case len(op.To) > 255:
			want = syscall.ENAMETOOLONG
		case !validModelKey(op.To):
			want = syscall.EINVAL
		}
		if d := wantErr("rename", errnoOf(unix.Rename(c.path(op.Key), c.path(op.To))), want); d != "" {
			return d
		}
		if want == 0 && op.Key != op.To {
			delete(c.keys, op.Key)
			c.keys[op.To] = v
			c.reg.publish(c.path(op.To), v.data)
		}
		if d := c.statSize(op.Key); d != "" {
			return d
		}
		return c.statSize(op.To)
	case mXRename:
		want := syscall.EXDEV
		if c.keys[op.Key] == nil {
			want = syscall.ENOENT
		}
		return wantErr("rename to "+modelShared, errnoOf(unix.Rename(c.path(op.Key), filepath.Join(c.shared, op.To))), want)
	case mUnlink:
		want := syscall.ENOENT
		if c.keys[op.Key] != nil {
			want = 0
		}
		if d := wantErr("unlink", errnoOf(unix.Unlink(c.path(op.Key))), want); d != "" {
			return d
		}
		delete(c.keys, op.Key)
		return c.statSize(op.Key)
	case mSetCT, mSetTTL:
		v := c.keys[op.Key]
		want := syscall.ENOENT
		if v != nil {
			want = 0
		}
		attr := xattrContentType
		if op.K == mSetTTL {
			attr = xattrTTL
		}
		if d := wantErr("setxattr "+attr, errnoOf(unix.Setxattr(c.path(op.Key), attr, []byte(op.Val), 0)), want); d != "" {
			return d
		}
		if v != nil && op.K == mSetCT {
			v.ct = op.Val
		} else if v != nil {
			ttl, err := quota.ParseTTL(op.Val)
			if err != nil {
				panic(err)
			}
			v.ttl = ttl.String()
		}
		return ""
	case mExpire:
		v := c.keys[op.Key]
		want := syscall.ENOENT
		if v != nil {
			want = 0
		}
		if d := wantErr("setxattr user.iris.ttl 1s", errnoOf(unix.Setxattr(c.path(op.Key), xattrTTL, []byte("1s"), 0)), want); d != "" {
			return d
		}
		if v == nil {
			return ""
		}
		time.Sleep(1100 * time.Millisecond)
		delete(c.keys, op.Key)
		if d := c.statSize(op.Key); d != "" {
			return "after expiry: " + d
		}
		if _, err := os.ReadFile(c.path(op.Key)); !errors.Is(err, syscall.ENOENT) {
			return fmt.Sprintf("read after expiry: %v, want ENOENT", err)
		}
		return c.list()
	case mRead:
		return c.read(op.Key)
	case mList:
		return c.list()
	case mBadCreate:
		want := syscall.EINVAL
		if len(op.Key) > 255 {
			want = syscall.ENAMETOOLONG
		}
		fd, err := unix.Open(c.path(op.Key), unix.O_RDWR|unix.O_CREAT, 0o644)
		if err == nil {
			unix.Close(fd)
		}
		return wantErr(fmt.Sprintf("create %q", op.Key), errnoOf(err), want)
	case mNotFile:
		var err error
		switch op.Val {
		case "mkdir":
			err = unix.Mkdir(c.path(op.Key+".d"), 0o755)
		case "symlink":
			err = unix.Symlink(op.Key, c.path(op.Key+".l"))
		case "link":
			if c.keys[op.Key] == nil {
				return "" // ENOENT from the kernel: not ours to say
			}
			err = unix.Link(c.path(op.Key), c.path(op.Key+".h"))
		case "index":
			var fd int
			if fd, err = unix.Open(c.path(indexName), unix.O_WRONLY|unix.O_TRUNC, 0); err == nil {
				unix.Close(fd)
			}
		}
		return wantErr(op.Val, errnoOf(err), syscall.EPERM)
	case mShPut:
		return c.sharedPut(op)
	case mShRead:
		return c.sharedRead(op.Key)
	case mShUnlink:
		err := unix.Unlink(filepath.Join(c.shared, op.Key))
		if e := errnoOf(err); e != 0 && e != syscall.ENOENT {
			return fmt.Sprintf("unlink %s/%s: %v", modelShared, op.Key, err)
		}
		return ""
	}
	panic(fmt.Sprintf("op kind %d", op.K))
}

func validModelKey(k string) bool {
	if k == "" || len(k) > 255 {
		return false
	}
	for i := 0; i < len(k); i++ {
		b := k[i]
		alnum := b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b >= '0' && b <= '9'
		if !alnum && (i == 0 || b != '.' && b != '_' && b != '-') {
			return false
		}
	}
	return true
}

// session runs an open/steps/close session.
func (c *mclient) session(op mop) string {
	old := c.keys[op.Key]
	var wantOpen syscall.Errno
	switch {
	case old != nil && op.Flags&fCreat != 0 && op.Flags&fExcl != 0:
		wantOpen = syscall.EEXIST
	case old == nil && op.Flags&fCreat == 0:
		wantOpen = syscall.ENOENT
	}
	fd, err := unix.Open(c.path(op.Key), op.Flags.open(), 0o644)
	if d := wantErr("open "+op.Flags.String(), errnoOf(err), wantOpen); d != "" {
		if err == nil {
			unix.Close(fd)
		}
		return d
	}
	if wantOpen != 0 {
		return ""
	}
	closed := false
	defer func() {
		if !closed {
			unix.Close(fd)
		}
	}()
	var stage []byte
	if old != nil && op.Flags&fTrunc == 0 {
		stage = bytes.Clone(old.data)
	}
	var failed syscall.Errno // a refused write: nothing more is published
	var pos int64            // the descriptor's offset
	appending := op.Flags&fAppend != 0
	for i, st := range op.Steps {
		what := fmt.Sprintf("step %d %s", i, skindNames[st.K])
		switch st.K {
		case sPwrite, sWrite:
			data := gen(st.Tag, st.N)
			off := st.Off
			if st.K == sWrite {
				off = pos
			}
			if appending {
				off = int64(len(stage))
			}
			want := failed
			if want == 0 && off+st.N > int64(len(stage)) {
				want = c.admit(op.Key, off+st.N)
			}
			var n int
			if st.K == sWrite {
				n, err = unix.Write(fd, data)
			} else {
				n, err = unix.Pwrite(fd, data, st.Off)
			}
			if d := wantErr(what, errnoOf(err), want); d != "" {
				return d
			}
			if want != 0 {
				failed = want
				continue
			}
			if int64(n) != st.N {
				return fmt.Sprintf("%s: wrote %d of %d bytes", what, n, st.N)
			}
			stage = writeAt(stage, data, off)
			if st.K == sWrite && !appending {
				pos = off + st.N
			}
		case sFtrunc:
			want := failed
			if want == 0 && st.N > int64(len(stage)) {
				want = c.admit(op.Key, st.N)
			}
			if d := wantErr(what, errnoOf(unix.Ftruncate(fd, st.N)), want); d != "" {
				return d
			}
			if want != 0 {
				failed = want
				continue
			}
			stage = resize(stage, st.N)
		case sReadBack:
			if failed != 0 {
				continue // what a failed handle reads back is not specified
			}
			buf := make([]byte, len(stage)+4096)
			got := 0
			for got < len(buf) {
				n, err := unix.Pread(fd, buf[got:], int64(got))
				if err != nil {
					return fmt.Sprintf("%s: %v", what, err)
				}
				if n == 0 {
					break
				}
				got += n
			}
			if !bytes.Equal(buf[:got], stage) {
				return what + ": " + diffBytes(buf[:got], stage)
			}
		case sFsync:
			if d := wantErr(what, errnoOf(unix.Fsync(fd)), failed); d != "" {
				return d
			}
			if failed == 0 {
				c.set(op.Key, stage)
			}
		}
	}
	closed = true
	if d := wantErr("close", errnoOf(unix.Close(fd)), failed); d != "" {
		return d
	}
	if failed == 0 {
		c.set(op.Key, stage)
	}
	return c.statSize(op.Key)
}

// statSize checks that stat agrees with the model right after a change.
func (c *mclient) statSize(key string) string {
	if !validModelKey(key) {
		return ""
	}
	var st unix.Stat_t
	err := unix.Stat(c.path(key), &st)
	v := c.keys[key]
	if v == nil {
		return wantErr("stat "+key, errnoOf(err), syscall.ENOENT)
	}
	if err != nil {
		return fmt.Sprintf("stat %s: %v, the model has %d bytes", key, err, len(v.data))
	}
	if st.Size != int64(len(v.data)) {
		return fmt.Sprintf("stat %s: size %d, the model says %d", key, st.Size, len(v.data))
	}
	return ""
}

// readAll reads fd to its end and fstats it.
func readAll(fd int) ([]byte, int64, error) {
	var out []byte
	buf := make([]byte, 64<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err != nil {
			return out, 0, err
		}
		if n == 0 {
			break
		}
		out = append(out, buf[:n]...)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return out, 0, err
	}
	return out, st.Size, nil
}

func readPath(path string) ([]byte, int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY, 0)
	if err != nil {
		return nil, 0, err
	}
	defer unix.Close(fd)
	return readAll(fd)
}

func getxattr(path, name string) (string, error) {
	buf := make([]byte, 1024)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// read checks a key's value, size and metadata.
func (c *mclient) read(key string) string {
	v := c.keys[key]
	data, size, err := readPath(c.path(key))
	if v == nil {
		return wantErr("read "+key, errnoOf(err), syscall.ENOENT)
	}
	if err != nil {
		return fmt.Sprintf("read %s: %v, the model has %s", key, err, describe(v.data))
	}
	if !bytes.Equal(data, v.data) {
		return "read " + key + ": " + diffBytes(data, v.data)
	}
	if size != int64(len(data)) {
		return fmt.Sprintf("read %s: fstat says %d bytes, read %d", key, size, len(data))
	}
	sum := sha256.Sum256(v.data)
	checks := [][2]string{{xattrFingerprint, hex.EncodeToString(sum[:])}, {xattrTTL, v.ttl}}
	if v.ct != "" {
		checks = append(checks, [2]string{xattrContentType, v.ct})
	}
	for _, x := range checks {
		got, err := getxattr(c.path(key), x[0])
		if err != nil {
			return fmt.Sprintf("getxattr %s %s: %v", key, x[0], err)
		}
		if got != x[1] {
			return fmt.Sprintf("getxattr %s %s = %q, the model says %q", key, x[0], got, x[1])
		}
	}
	return ""
}

// list checks the scope's listing, _index.json, .stats and statfs.
func (c *mclient) list() string {
	want := []string{indexName}
	for k := range c.keys {
		want = append(want, k)
	}
	sort.Strings(want)
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return fmt.Sprintf("readdir: %v", err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if !slices.Equal(got, want) {
		return fmt.Sprintf("readdir: %q, the model says %q", got, want)
	}
	idx, err := os.ReadFile(filepath.Join(c.dir, indexName))
	if err != nil {
		return fmt.Sprintf("read %s: %v", indexName, err)
	}
	var doc map[string]struct {
		Size int64 `json:"size_bytes"`
	}
	if err := json.Unmarshal(idx, &doc); err != nil {
		return fmt.Sprintf("%s: %v", indexName, err)
	}
	if len(doc) != len(c.keys) {
		return fmt.Sprintf("%s lists %d keys, the model has %d", indexName, len(doc), len(c.keys))
	}
	for k, v := range c.keys {
		if r, ok := doc[k]; !ok || r.Size != int64(len(v.data)) {
			return fmt.Sprintf("%s: %s is %+v (listed: %v), the model has %d bytes", indexName, k, r, ok, len(v.data))
		}
	}
	var st struct {
		Scopes []struct {
			Scope string `json:"scope"`
			Keys  int64  `json:"keys"`
			Bytes int64  `json:"bytes"`
		} `json:"scopes"`
	}
	b, err := os.ReadFile(filepath.Join(c.root, statsName))
	if err != nil {
		return fmt.Sprintf("read .stats: %v", err)
	}
	if err := json.Unmarshal(b, &st); err != nil {
		return fmt.Sprintf(".stats: %v", err)
	}
	for _, sc := range st.Scopes {
		if sc.Scope == c.scope && (sc.Keys != int64(len(c.keys)) || sc.Bytes != c.usage()) {
			return fmt.Sprintf(".stats: %s has %d keys, %d bytes; the model %d keys, %d bytes", c.scope, sc.Keys, sc.Bytes, len(c.keys), c.usage())
		}
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(c.dir, &sfs); err != nil {
		return fmt.Sprintf("statfs: %v", err)
	}
	if wantFree := uint64((modelQuota - c.usage()) / 4096); sfs.Bfree != wantFree {
		return fmt.Sprintf("statfs: %d free blocks, the model says %d (usage %d)", sfs.Bfree, wantFree, c.usage())
	}
	return ""
}

// sharedPut publishes a self-describing value to a shared key.
func (c *mclient) sharedPut(op mop) string {
	c.seq++
	val := makeValue(c.id, c.seq, int(op.Size))
	path := filepath.Join(c.shared, op.Key)
	var err error
	switch op.Val {
	case "trunc":
		err = os.WriteFile(path, val, 0o644)
	case "rename":
		tmp := filepath.Join(c.shared, fmt.Sprintf("tmp-c%d", c.id))
		if err = os.WriteFile(tmp, val, 0o644); err == nil {
			err = os.Rename(tmp, path)
		}
	case "chunked":
		var f *os.File
		if f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644); err == nil {
			for off := 0; off < len(val) && err == nil; off += 4096 {
				_, err = f.Write(val[off:min(off+4096, len(val))])
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		return fmt.Sprintf("shared put %s (%s): %v", op.Key, op.Val, err)
	}
	c.reg.publishShared(path, c.id, c.seq)
	return ""
}

func (c *mclient) sharedRead(key string) string {
	path := filepath.Join(c.shared, key)
	data, size, err := readPath(path)
	if errors.Is(err, syscall.ENOENT) {
		return ""
	}
	if err != nil {
		return fmt.Sprintf("read %s/%s: %v", modelShared, key, err)
	}
	if d := checkShared(path, data); d != "" {
		return d
	}
	if size != int64(len(data)) && c.reg != nil {
		c.reg.skews.Add(1)
	}
	return ""
}

// checkShared checks that a value read from a shared key is complete.
// That it was published there is checked at the end: the close that
// publishes it may still be returning.
func checkShared(path string, data []byte) string {
	if _, _, err := checkValue(data); err != nil {
		return fmt.Sprintf("read %s: %v", path, err)
	}
	return ""
}

// diagnose adds what the store holds for the keys op names.
func (c *mclient) diagnose(op mop) string {
	if c.diag == nil || op.K >= mShPut || !validModelKey(op.Key) {
		return ""
	}
	s := " [the store: " + op.Key + " " + c.diag(c.scope, op.Key)
	if validModelKey(op.To) && op.K == mRename {
		s += "; " + op.To + " " + c.diag(c.scope, op.To)
	}
	return s + "]"
}

// storeDiag describes a key as the store has it.
func storeDiag(tm *testMount) func(scope, key string) string {
	return func(scope, key string) string {
		e, err := tm.store.Lookup(scope, key)
		if err != nil {
			return err.Error()
		}
		return fmt.Sprintf("%d bytes, sha256 %x, ttl %v, content type %q", e.Size, e.Fingerprint[:6], e.TTL, e.ContentType)
	}
}

// ---------------------------------------------------------------------------
// The run.

// modelRegressions are reproducers the model found, replayed on every run.
var modelRegressions = []struct {
	name string
	ops  []mop
}{}

// TestModelRegressions replays the reproducers of modelRegressions.
func TestModelRegressions(t *testing.T) {
	for _, rc := range modelRegressions {
		t.Run(rc.name, func(t *testing.T) {
			if at, d := replayModel(t, rc.ops); d != "" {
				t.Errorf("op %d %s: %s", at, formatOp(rc.ops[at]), d)
			}
		})
	}
}

// replayModel runs ops as client 0 alone on a fresh mount and returns the
// first divergence.
func replayModel(t *testing.T, ops []mop) (int, string) {
	t.Helper()
	tm := mountStore(t, mountOptions{config: modelConfig(1)})
	defer tm.unmount()
	c := newClient(tm.dir, 0, nil)
	c.diag = storeDiag(tm)
	for i, op := range ops {
		if d := c.exec(op); d != "" {
			return i, d + c.diagnose(op)
		}
	}
	return -1, ""
}

type modelObs struct {
	path string
	hash [32]byte
	w    int
	seq  int
}

// TestModel: several clients run generated operations through the mount
// and against the model, with readers reading everything all the time.
func TestModel(t *testing.T) {
	seed := uint64(time.Now().UnixNano())
	if v := os.Getenv(modelSeedEnv); v != "" {
		var err error
		if seed, err = strconv.ParseUint(v, 10, 64); err != nil {
			t.Fatalf("%s=%q: %v", modelSeedEnv, v, err)
		}
	}
	dur := 3 * time.Second
	if v := os.Getenv(modelTimeEnv); v != "" {
		var err error
		if dur, err = time.ParseDuration(v); err != nil {
			t.Fatalf("%s=%q: %v", modelTimeEnv, v, err)
		}
	}
	clients := 4
	if v := os.Getenv(modelClientsEnv); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			t.Fatalf("%s=%q: want a positive number", modelClientsEnv, v)
		}
		clients = n
	}
	const readers = 2
	t.Logf("seed %d (%s=%d replays it), %d clients, %d readers, %v", seed, modelSeedEnv, seed, clients, readers, dur)
	tm := mountStore(t, mountOptions{config: modelConfig(clients)})
	reg := newRegistry()

	type failure struct {
		client int
		ops    []mop // up to and including the divergent one
		msg    string
	}
	var (
		mu       sync.Mutex
		failures []failure
		readErrs []string
		obs      []modelObs
		stop     atomic.Bool
		done     = make(chan struct{})
		counts   = make([]int, clients)
		cs       = make([]*mclient, clients)
	)
	deadline := time.Now().Add(dur)
	var wg sync.WaitGroup
	for i := range clients {
		cs[i] = newClient(tm.dir, i, reg)
		cs[i].diag = storeDiag(tm)
		wg.Add(1)
		go func(c *mclient) {
			defer wg.Done()
			g := newGen(seed, c.id)
			var ran []mop
			for time.Now().Before(deadline) && !stop.Load() {
				op := g.next()
				ran = append(ran, op)
				if d := c.exec(op); d != "" {
					d += c.diagnose(op)
					mu.Lock()
					failures = append(failures, failure{c.id, ran, fmt.Sprintf("op %d %s: %s", len(ran)-1, formatOp(op), d)})
					mu.Unlock()
					stop.Store(true)
					return
				}
			}
			counts[c.id] = len(ran)
		}(cs[i])
	}
	var rwg sync.WaitGroup
	// skews counts reads whose descriptor's fstat showed another size than
	// the (complete, published) value it read: an open whose retry raced a
	// second replacement of the key gets the current value on the inode
	// of the one it looked up (README, known limits).
	var nreads, skews atomic.Int64
	for r := range readers {
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(1000+r)))
			for {
				select {
				case <-done:
					return
				default:
				}
				var path string
				shared := rng.IntN(3) == 0
				if shared {
					path = filepath.Join(tm.dir, modelShared, modelShKeys[rng.IntN(len(modelShKeys))])
				} else {
					path = filepath.Join(tm.dir, fmt.Sprintf("c%d", rng.IntN(clients)), modelKeys[rng.IntN(len(modelKeys))])
				}
				data, size, err := readPath(path)
				nreads.Add(1)
				if errors.Is(err, syscall.ENOENT) {
					continue
				}
				msg := ""
				o := modelObs{path: path}
				switch {
				case err != nil:
					msg = fmt.Sprintf("reader: %s: %v", path, err)
				case shared:
					msg = checkShared(path, data)
					o.w, o.seq, _ = checkValue(data)
				default:
					o.hash = sha256.Sum256(data)
				}
				if err == nil && size != int64(len(data)) {
					// The value read must still be complete and published
					// (checked below); see skews.
					skews.Add(1)
				}
				mu.Lock()
				if msg != "" {
					if len(readErrs) < 20 {
						readErrs = append(readErrs, msg)
					}
				} else {
					obs = append(obs, o)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	close(done)
	rwg.Wait()

	total := 0
	for _, n := range counts {
		total += n
	}
	t.Logf("%d operations by %d clients, %d reads by %d readers (%d with fstat's size not the value's: a retried open raced another replacement)",
		total, clients, nreads.Load(), readers, skews.Load()+reg.skews.Load())
	for _, m := range readErrs {
		t.Errorf("seed %d: %s", seed, m)
	}
	// What the readers saw must have been published.
	unpublished := 0
	for _, o := range obs {
		ok := false
		if o.seq != 0 {
			ok = reg.publishedShared(o.path, o.w, o.seq)
		} else {
			ok = reg.published(o.path, o.hash)
		}
		if !ok {
			if unpublished++; unpublished <= 10 {
				t.Errorf("seed %d: a reader of %s saw a value never published there (%x, writer %d seq %d)", seed, o.path, o.hash[:6], o.w, o.seq)
			}
		}
	}
	if len(failures) == 0 && !t.Failed() {
		// The end state: every client's keys, listing and counters.
		for _, c := range cs {
			for _, k := range modelKeys {
				if d := c.read(k); d != "" {
					t.Errorf("seed %d: client %d at the end: %s", seed, c.id, d)
				}
			}
			if d := c.list(); d != "" {
				t.Errorf("seed %d: client %d at the end: %s", seed, c.id, d)
			}
		}
		for _, k := range modelShKeys {
			path := filepath.Join(tm.dir, modelShared, k)
			data, _, err := readPath(path)
			if errors.Is(err, syscall.ENOENT) {
				continue
			}
			w, seq, verr := checkValue(data)
			if err != nil || verr != nil || !reg.publishedShared(path, w, seq) {
				t.Errorf("seed %d: %s at the end: %v %v (writer %d seq %d)", seed, path, err, verr, w, seq)
			}
		}
		rep, err := tm.store.Fsck(false)
		if err != nil {
			t.Fatalf("fsck: %v", err)
		}
		for _, p := range rep.Problems {
			t.Errorf("seed %d: fsck at the end: %s", seed, p)
		}
	}
	for _, f := range failures {
		t.Errorf("seed %d: client %d: %s", seed, f.client, f.msg)
		shrinkAndReport(t, seed, f.client, f.ops)
	}
}

// shrinkAndReport looks for a small list of operations that still diverges
// when replayed alone on a fresh mount, and prints it.
func shrinkAndReport(t *testing.T, seed uint64, client int, ops []mop) {
	t.Helper()
	renamed := asClient0(ops)
	budget := 3 * time.Minute
	start := time.Now()
	fails := func(cand []mop) bool {
		_, d := replayModel(t, cand)
		return d != ""
	}
	if !fails(renamed) {
		t.Errorf("seed %d: client %d's %d operations do not diverge when replayed alone: the divergence needs the other clients (replay the seed)", seed, client, len(ops))
		return
	}
	min := ddmin(renamed, fails, start.Add(budget))
	at, d := replayModel(t, min)
	note := ""
	if time.Since(start) > budget {
		note = " (shrinking stopped at its time budget)"
	}
	t.Errorf("seed %d: client %d: a reproducer of %d operations (from %d)%s; replayed alone it fails at op %d: %s\n"+
		"Go literal (add to modelRegressions in fs/model_test.go):\n%s\nshell script:\n%s",
		seed, client, len(min), len(ops), note, at, d, formatOps(min), shellScript(min))
}

// asClient0 is ops as client 0 runs them when replayed alone: they name
// keys, not scopes, except the target of a rename to the shared scope.
func asClient0(ops []mop) []mop {
	out := slices.Clone(ops)
	for i := range out {
		if out[i].K == mXRename {
			out[i].To = "x-c0"
		}
	}
	return out
}

// ddmin is Zeller's delta debugging: a 1-minimal sublist of ops that still
// fails (or the smallest found by the deadline).
func ddmin(ops []mop, fails func([]mop) bool, deadline time.Time) []mop {
	n := 2
	for len(ops) >= 2 && time.Now().Before(deadline) {
		chunk := (len(ops) + n - 1) / n
		reduced := false
		for start := 0; start < len(ops) && time.Now().Before(deadline); start += chunk {
			end := min(start+chunk, len(ops))
			comp := append(slices.Clone(ops[:start]), ops[end:]...)
			if len(comp) > 0 && fails(comp) {
				ops = comp
				n = max(n-1, 2)
				reduced = true
				break
			}
		}
		if !reduced {
			if n >= len(ops) {
				break
			}
			n = min(2*n, len(ops))
		}
	}
	return ops
}

// formatOp prints op as a Go literal.
func formatOp(op mop) string {
	var b strings.Builder
	fmt.Fprintf(&b, "{K: %s", op.K)
	if op.Key != "" {
		fmt.Fprintf(&b, ", Key: %q", op.Key)
	}
	if op.To != "" {
		fmt.Fprintf(&b, ", To: %q", op.To)
	}
	if op.Flags != 0 {
		fmt.Fprintf(&b, ", Flags: %s", op.Flags)
	}
	if op.Size != 0 {
		fmt.Fprintf(&b, ", Size: %d", op.Size)
	}
	if op.Val != "" {
		fmt.Fprintf(&b, ", Val: %q", op.Val)
	}
	if len(op.Steps) > 0 {
		b.WriteString(", Steps: []mstep{")
		for i, s := range op.Steps {
			if i > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "{K: %s", skindNames[s.K])
			if s.Off != 0 {
				fmt.Fprintf(&b, ", Off: %d", s.Off)
			}
			if s.N != 0 {
				fmt.Fprintf(&b, ", N: %d", s.N)
			}
			if s.Tag != "" {
				fmt.Fprintf(&b, ", Tag: %q", s.Tag)
			}
			b.WriteString("}")
		}
		b.WriteString("}")
	}
	b.WriteString("}")
	return b.String()
}

func formatOps(ops []mop) string {
	var b strings.Builder
	b.WriteString("\t{name: \"TODO\", ops: []mop{\n")
	for _, op := range ops {
		fmt.Fprintf(&b, "\t\t%s,\n", formatOp(op))
	}
	b.WriteString("\t}},")
	return b.String()
}

// shellScript renders ops as a script to run against a mount configured
// with modelConfig(1) (M=mount point): python3 does the system calls the
// shell has no words for (pwrite, ftruncate on one descriptor, truncate(2)).
func shellScript(ops []mop) string {
	var b strings.Builder
	b.WriteString("#!/bin/sh\n# mount a store with this config first:\n")
	for _, line := range strings.Split(strings.TrimSpace(modelConfig(1)), "\n") {
		b.WriteString("#   " + line + "\n")
	}
	b.WriteString(`set -u; export D=${M:?the mount point}/c0 S=$M/shared
py() { python3 -c "import os, sys, time
def gen(t, n):
    s = ''.join('%s:%07d\n' % (t, i) for i in range(n // (len(t) + 9) + 2))
    return s[:n].encode()
$1"; echo "  -> exit $?"; }
`)
	q := func(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }
	for i, op := range ops {
		fmt.Fprintf(&b, "# %d %s\n", i, formatOp(op))
		p := `"$D"/` + q(op.Key)
		switch op.K {
		case mSession:
			var py strings.Builder
			fmt.Fprintf(&py, "fd = os.open(os.environ['D'] + '/%s', %d, 0o644)", op.Key, op.Flags.open())
			for _, s := range op.Steps {
				switch s.K {
				case sPwrite:
					fmt.Fprintf(&py, "; os.pwrite(fd, gen('%s', %d), %d)", s.Tag, s.N, s.Off)
				case sWrite:
					fmt.Fprintf(&py, "; os.write(fd, gen('%s', %d))", s.Tag, s.N)
				case sFtrunc:
					fmt.Fprintf(&py, "; os.ftruncate(fd, %d)", s.N)
				case sFsync:
					py.WriteString("; os.fsync(fd)")
				case sReadBack:
					py.WriteString("; print(len(os.pread(fd, 1 << 20, 0)))")
				}
			}
			py.WriteString("; os.close(fd)")
			fmt.Fprintf(&b, "py %s\n", q(py.String()))
		case mTruncate:
			fmt.Fprintf(&b, "py %s\n", q(fmt.Sprintf("os.truncate(os.environ['D'] + '/%s', %d)", op.Key, op.Size)))
		case mRename:
			fmt.Fprintf(&b, "mv -T %s \"$D\"/%s\n", p, q(op.To))
		case mXRename:
			fmt.Fprintf(&b, "py %s\n", q(fmt.Sprintf("os.rename(os.environ['D'] + '/%s', os.environ['S'] + '/%s')", op.Key, op.To)))
		case mUnlink:
			fmt.Fprintf(&b, "rm %s\n", p)
		case mSetCT:
			fmt.Fprintf(&b, "setfattr -n user.iris.content_type -v %s %s\n", q(op.Val), p)
		case mSetTTL:
			fmt.Fprintf(&b, "setfattr -n user.iris.ttl -v %s %s\n", q(op.Val), p)
		case mExpire:
			fmt.Fprintf(&b, "setfattr -n user.iris.ttl -v 1s %s && sleep 1.1 && ! stat %s\n", p, p)
		case mRead:
			fmt.Fprintf(&b, "stat -c %%s %s; sha256sum %s; getfattr -d -m user.iris %s\n", p, p, p)
		case mList:
			b.WriteString("ls -la $D; cat $D/_index.json; df -B1 $D\n")
		case mBadCreate:
			fmt.Fprintf(&b, ": > %s\n", p)
		case mNotFile:
			fmt.Fprintf(&b, "# %s on %s: EPERM\n", op.Val, p)
		case mShPut, mShRead, mShUnlink:
			fmt.Fprintf(&b, "# shared %s %s (not needed alone)\n", op.K, op.Key)
		}
	}
	return b.String()
}
