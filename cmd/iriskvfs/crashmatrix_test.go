package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/store"
)

// The crash matrix SIGKILLs the mount daemon at random points of each of
// its write paths, and the CLI in the middle of offline puts; after each
// kill it mounts again (the dead mount must be cleared by the mount itself),
// and checks that every acknowledged change is there exactly, that a change
// in flight at the kill left its keys all old or all new, that nothing else
// appeared, and that fsck is clean.
//
// The paths, one per iteration in turn:
//
//	create       open(O_CREAT|O_EXCL), write, close     (a writer process)
//	write        open, pwrite at offsets, close          (a writer process)
//	close        ... the kill aimed at close()           (a writer process)
//	rename       rename over existing keys or not        (a writer process)
//	unlink       unlink                                  (a writer process)
//	setxattr     user.iris.content_type, user.iris.ttl   (a writer process)
//	prune        the prune route of the admin socket (`iriskvfs prune`), expired entries waiting
//	seed         its seed-instructions route (`iriskvfs seed`), the sets out of date
//	fsck-repair  its fsck?repair=true route (`iriskvfs fsck --repair`), values corrupt
//	rm           its delete route (`iriskvfs rm`), key after key
//	clear        its clear route (`iriskvfs clear`) of a scope of 60 keys: all or none
//	cli-put      `iriskvfs put` without a daemon (offline)
//
// Acknowledged means: close (or the syscall) returned 0 in the writer, the
// admin socket answered 2xx, or the CLI exited 0. The writer announces each change before it starts it
// and once it returned (lines on stdout, each one write(2)):
//
//	ready
//	intent ID KEY STATE [KEY STATE]   about to change KEY(s) to STATE(s)
//	ack ID                            the change returned 0
//
// A STATE is "-" (no such key) or "SHA256[,ct=TYPE][,ttl=DURATION]": the
// value's hash, and the content type and TTL xattrs where they were set.
//
// IRISKVFS_CRASH_ITERATIONS (make stress) sets the number of kills (at
// least one per path); IRISKVFS_CRASH_SEED replays a seed.

const (
	matrixWriterMode = "matrix-writer"
	matrixKindEnv    = "IRISKVFS_MATRIX_KIND"
	matrixStateEnv   = "IRISKVFS_MATRIX_STATE"
	matrixScope      = "artifacts"
)

var matrixPaths = []string{"create", "write", "close", "rename", "unlink", "setxattr", "prune", "seed", "fsck-repair", "rm", "clear", "cli-put"}

// clearScope is the scope the clear path empties (the model's is never
// cleared whole), clearKeys how many keys it holds before each clear.
const (
	clearScope = "task"
	clearKeys  = 60
)

// kstate is what a key holds: nothing (hash ""), or a value with, where
// they were set, a content type and a TTL.
type kstate struct {
	hash, ct, ttl string
}

func (s kstate) String() string {
	if s.hash == "" {
		return "-"
	}
	out := s.hash
	if s.ct != "" {
		out += ",ct=" + s.ct
	}
	if s.ttl != "" {
		out += ",ttl=" + s.ttl
	}
	return out
}

func parseKstate(str string) (kstate, error) {
	if str == "-" {
		return kstate{}, nil
	}
	f := strings.Split(str, ",")
	s := kstate{hash: f[0]}
	if len(s.hash) != 64 {
		return s, fmt.Errorf("bad state %q", str)
	}
	for _, x := range f[1:] {
		switch {
		case strings.HasPrefix(x, "ct="):
			s.ct = x[3:]
		case strings.HasPrefix(x, "ttl="):
			s.ttl = x[4:]
		default:
			return s, fmt.Errorf("bad state %q", str)
		}
	}
	return s, nil
}

func (s kstate) short() string {
	if s.hash == "" {
		return "nothing"
	}
	return s.hash[:12] + strings.TrimPrefix(s.String(), s.hash)
}

func hashOf(b []byte) string {
	h := sha256.Sum256(b)
	return hex.EncodeToString(h[:])
}

// mchange is one announced change: the states it gives its keys.
type mchange struct {
	keys   []string
	states []kstate
}

// TestMatrixWriter is the writer process of TestCrashMatrix.
func TestMatrixWriter(t *testing.T) {
	if os.Getenv(crashChildEnv) != matrixWriterMode {
		t.Skip("the writer process of TestCrashMatrix")
	}
	dir := os.Getenv(mcrashDirEnv)
	kind := os.Getenv(matrixKindEnv)
	seed, _ := strconv.ParseUint(os.Getenv(crashSeedEnv), 10, 64)
	time.AfterFunc(2*time.Minute, func() { os.Exit(4) }) // never outlive a lost parent
	var model map[string]string
	if err := json.Unmarshal([]byte(os.Getenv(matrixStateEnv)), &model); err != nil {
		fmt.Fprintln(os.Stderr, "writer:", err)
		os.Exit(3)
	}
	say := announcer()
	fail := func(err error) {
		fmt.Fprintf(os.Stderr, "writer: at %d: %v\n", time.Now().UnixNano(), err)
		os.Exit(3)
	}
	say("ready")
	var wg sync.WaitGroup
	for g := 0; g < 2; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prefix := fmt.Sprintf("w%d-", g)
			// This writer's keys: their bytes (read back now) and states.
			vals := map[string][]byte{}
			states := map[string]kstate{}
			for k, st := range model {
				if !strings.HasPrefix(k, prefix) {
					continue
				}
				b, err := os.ReadFile(filepath.Join(dir, k))
				if err != nil {
					fail(err)
				}
				s, _ := parseKstate(st)
				vals[k], states[k] = b, s
			}
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			stream := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), byte(seed >> 16), byte(g)})
			data := func() []byte {
				b := make([]byte, rng.IntN(256<<10+1))
				stream.Read(b)
				return b
			}
			existing := func() string {
				var ks []string
				for k := range vals {
					ks = append(ks, k)
				}
				if len(ks) == 0 {
					return ""
				}
				slices.Sort(ks)
				return ks[rng.IntN(len(ks))]
			}
			anyKey := func() string { return fmt.Sprintf("%s%d", prefix, rng.IntN(24)) }
			for seq := 0; ; seq++ {
				id := fmt.Sprintf("%d.%d", g, seq)
				k := kind
				if rng.IntN(10) < 3 { // some of everything, so that keys exist
					k = []string{"create", "write", "close", "rename", "unlink", "setxattr"}[rng.IntN(6)]
				}
				key := existing()
				if key == "" || k == "create" {
					k, key = "create", anyKey()
					if _, ok := vals[key]; ok {
						// O_EXCL needs a free name: remove it first (announced).
						say("intent %s %s -", id, key)
						if err := os.Remove(filepath.Join(dir, key)); err != nil {
							fail(err)
						}
						say("ack %s", id)
						delete(vals, key)
						delete(states, key)
						id += "b"
					}
				}
				path := filepath.Join(dir, key)
				switch k {
				case "create":
					b := data()
					st := kstate{hash: hashOf(b)}
					say("intent %s %s %s", id, key, st)
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
					if err != nil {
						fail(err)
					}
					if err := writeInChunks(f, b, rng); err != nil {
						fail(err)
					}
					if err := f.Close(); err != nil {
						fail(err)
					}
					say("ack %s", id)
					vals[key], states[key] = b, st
				case "write":
					// Patches at random offsets (past the end too: a hole
					// reads as zeros). The announcement comes before the
					// open: the kill lands in the writes or the close.
					b := bytes.Clone(vals[key])
					type patch struct {
						off int
						p   []byte
					}
					var patches []patch
					for range 1 + rng.IntN(3) {
						p := data()
						p = p[:min(len(p), rng.IntN(64<<10))]
						off := rng.IntN(len(b) + 64<<10)
						if end := off + len(p); end > len(b) {
							b = append(b, make([]byte, end-len(b))...)
						}
						copy(b[off:], p)
						patches = append(patches, patch{off, p})
					}
					st := states[key]
					st.hash = hashOf(b)
					say("intent %s %s %s", id, key, st)
					f, err := os.OpenFile(path, os.O_WRONLY, 0)
					if err != nil {
						fail(err)
					}
					for _, pt := range patches {
						if _, err := f.WriteAt(pt.p, int64(pt.off)); err != nil {
							fail(err)
						}
					}
					if err := f.Close(); err != nil {
						fail(err)
					}
					say("ack %s", id)
					vals[key], states[key] = b, st
				case "close":
					// A whole new value (O_TRUNC), announced right before
					// close: the kill lands in the close.
					f, err := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
					if err != nil {
						fail(err)
					}
					b := data()
					if err := writeInChunks(f, b, rng); err != nil {
						fail(err)
					}
					st := states[key]
					st.hash = hashOf(b)
					say("intent %s %s %s", id, key, st)
					if err := f.Close(); err != nil {
						fail(err)
					}
					say("ack %s", id)
					vals[key], states[key] = b, st
				case "rename":
					to := anyKey()
					if to == key {
						continue
					}
					st := states[key]
					say("intent %s %s - %s %s", id, key, to, st)
					if err := os.Rename(path, filepath.Join(dir, to)); err != nil {
						fail(err)
					}
					say("ack %s", id)
					vals[to], states[to] = vals[key], st
					delete(vals, key)
					delete(states, key)
				case "unlink":
					say("intent %s %s -", id, key)
					if err := os.Remove(path); err != nil {
						fail(err)
					}
					say("ack %s", id)
					delete(vals, key)
					delete(states, key)
				case "setxattr":
					st := states[key]
					attr, v := "user.iris.content_type", fmt.Sprintf("text/x-matrix-%d", rng.IntN(1000))
					if rng.IntN(2) == 0 {
						attr, v = "user.iris.ttl", fmt.Sprintf("%dh", 1+rng.IntN(48))
						d, _ := time.ParseDuration(v)
						st.ttl = d.String()
					} else {
						st.ct = v
					}
					say("intent %s %s %s", id, key, st)
					if err := unix.Setxattr(path, attr, []byte(v), 0); err != nil {
						fail(err)
					}
					say("ack %s", id)
					states[key] = st
				}
			}
		}()
	}
	wg.Wait()
}

// matrixRun is the state of TestCrashMatrix.
type matrixRun struct {
	t              *testing.T
	rng            *rand.Rand
	storeDir       string
	point          string
	model          map[string]kstate // artifacts
	inflight       []mchange         // changes in flight at the last kill
	kills, acks    int
	hung, inFlight int
	perPath        map[string]int
	lastAdminAcked bool // the last admin command returned 0
	adminMid       int  // admin requests the kill interrupted
	adminDur       map[string]time.Duration
	seedKills      int               // r.kills when the sets were made stale
	corrupt        []string          // keys whose values were corrupted for fsck --repair
	clearWant      map[string]string // clearScope's keys and hashes before the clear
}

// TestCrashMatrix: see the comment at the top of this file.
func TestCrashMatrix(t *testing.T) {
	requireFUSE(t)
	// Checkpoints among the kills (the daemons inherit the environment).
	t.Setenv(checkpointChangesEnv, "48")
	iters := crashIterations(t, 2*len(matrixPaths), len(matrixPaths))
	iters = max(iters, len(matrixPaths))
	seed := crashSeed()
	t.Logf("seed %d (set %s to replay), %d kills over %d paths", seed, crashSeedEnv, iters, len(matrixPaths))
	tmp := t.TempDir()
	r := &matrixRun{
		t: t, rng: rand.New(rand.NewPCG(seed, 23)),
		storeDir: filepath.Join(tmp, "store"), point: filepath.Join(tmp, "mnt"),
		model: map[string]kstate{}, perPath: map[string]int{}, adminDur: map[string]time.Duration{},
	}
	start := time.Now()
	d := mountDaemon(t, r.storeDir, r.point)
	for it := 0; it < iters; it++ {
		path := matrixPaths[it%len(matrixPaths)]
		r.perPath[path]++
		var w *mountWriter
		switch path {
		case "prune", "seed", "fsck-repair", "rm", "clear":
			r.adminKill(d, path)
		case "cli-put":
			r.cliKills()
		default:
			w = r.writerKill(d, path)
		}
		d = r.remount(w)
		if !r.verify(path) || t.Failed() {
			t.Fatalf("iteration %d (%s) failed (seed %d)", it, path, seed)
		}
	}
	t.Logf("%d kills in %v (%v): %d acknowledged changes, %d kills with a change in flight, %d admin requests cut short, %d that left the daemon unable to exit, %d keys at the end",
		r.kills, time.Since(start).Round(time.Millisecond), r.perPath, r.acks, r.inFlight, r.adminMid, r.hung, len(r.model))
	if r.acks == 0 {
		t.Fatal("nothing was acknowledged: the test tested nothing")
	}
	if r := runCLI(t, nil, "unmount", r.point); r.code != 0 {
		t.Fatalf("unmount: %s", r)
	}
	if res := runCLI(t, nil, "--store", r.storeDir, "fsck"); res.code != 0 || !strings.HasSuffix(res.stdout, ": clean\n") {
		t.Errorf("offline fsck at the end: %s", res)
	}
}

// killDaemon SIGKILLs the daemon and waits until it is gone or dying.
func (r *matrixRun) killDaemon(d *daemon) {
	t := r.t
	t.Helper()
	if err := syscall.Kill(d.pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the daemon: %v", err)
	}
	r.kills++
	if !waitFor(10*time.Second, func() bool { return processGone(d.pid) || dying(d.pid) }) {
		t.Fatalf("the daemon (pid %d) survived SIGKILL:\n%s", d.pid, threadStates(d.pid))
	}
}

// writerKill runs a writer aimed at path and kills the daemon under it.
func (r *matrixRun) writerKill(d *daemon, path string) *mountWriter {
	t := r.t
	t.Helper()
	model := map[string]string{}
	for k, s := range r.model {
		if strings.HasPrefix(k, "w") {
			model[k] = s.String()
		}
	}
	state, _ := json.Marshal(model)
	w := startWriterChild(t, "TestMatrixWriter", crashChildEnv+"="+matrixWriterMode,
		mcrashDirEnv+"="+filepath.Join(r.point, matrixScope), crashSeedEnv+"="+strconv.FormatUint(r.rng.Uint64(), 10),
		matrixKindEnv+"="+path, matrixStateEnv+"="+string(state))
	pending := map[string]mchange{}
	// Half the kills come a random 5-150 ms after the writer started, the
	// others 0-1.5 ms after the n-th announcement of the path's kind.
	killAfter := -1
	if r.rng.IntN(2) == 0 {
		killAfter = 1 + r.rng.IntN(12)
	}
	intents := 0
	handle := func(line string) {
		f := strings.Fields(line)
		switch {
		case len(f) == 1 && f[0] == "ready":
			w.ready = true
		case len(f) >= 4 && len(f)%2 == 0 && f[0] == "intent":
			var c mchange
			for i := 2; i < len(f); i += 2 {
				st, err := parseKstate(f[i+1])
				if err != nil {
					t.Errorf("the writer said %q: %v", line, err)
				}
				c.keys, c.states = append(c.keys, f[i]), append(c.states, st)
			}
			pending[f[1]] = c
			intents++
		case len(f) == 2 && f[0] == "ack":
			c, ok := pending[f[1]]
			if !ok {
				t.Errorf("ack of an unannounced change: %q", line)
			}
			delete(pending, f[1])
			r.apply(c)
			r.acks++
		default:
			t.Errorf("the writer said %q", line)
		}
	}
	var timer <-chan time.Time
	safety := time.After(30 * time.Second)
wait:
	for {
		select {
		case line, ok := <-w.lines:
			if !ok {
				w.exitErr = w.cmd.Wait()
				w.ended = true
				t.Fatalf("the writer stopped before the daemon was killed: %v\nstderr:\n%s", w.exitErr, w.stderr.String())
			}
			wasReady, before := w.ready, intents
			handle(line)
			switch {
			case !wasReady && w.ready && killAfter < 0:
				timer = time.After(time.Duration(5+r.rng.IntN(146)) * time.Millisecond)
			case !wasReady && w.ready:
				timer = time.After(2 * time.Second) // should too few come
			case intents != before && intents == killAfter:
				timer = time.After(time.Duration(r.rng.IntN(1500)) * time.Microsecond)
			}
		case <-timer:
			break wait
		case <-safety:
			t.Fatalf("the writer did not get going within 30 s:\n%s", w.stderr.String())
		}
	}
	w.killedAt = time.Now()
	r.killDaemon(d)
	// Take in what the writer says until it ends (it fails once the
	// connection is gone) or a second passes (it is blocked on a mount that
	// hangs: the remount gets it out).
	deadline := time.After(time.Second)
drain:
	for !w.ended {
		select {
		case line, ok := <-w.lines:
			if !ok {
				w.exitErr = w.cmd.Wait()
				w.ended = true
				break drain
			}
			handle(line)
		case <-deadline:
			break drain
		}
	}
	w.pending = nil
	r.inflight = r.inflight[:0]
	for _, c := range pending {
		r.inflight = append(r.inflight, c)
	}
	// Lines still to come (from a writer blocked on a hung mount) are
	// taken in after the remount: keep the handler.
	w.acked = nil
	matrixLate[w] = handle
	return w
}

// matrixLate keeps the line handler of a writer whose last lines arrive
// after the remount.
var matrixLate = map[*mountWriter]func(string){}

// apply records an acknowledged change.
func (r *matrixRun) apply(c mchange) {
	for i, k := range c.keys {
		if c.states[i].hash == "" {
			delete(r.model, k)
		} else {
			r.model[k] = c.states[i]
		}
	}
}

// remount mounts again over the killed daemon's mount (it must clear it by
// itself); a writer left blocked on a hung mount is drained once it is free.
func (r *matrixRun) remount(w *mountWriter) *daemon {
	t := r.t
	t.Helper()
	if w != nil && !w.ended {
		r.hung++
		t.Logf("the killed daemon could not exit; the writer is blocked on the hung mount")
	} else if _, mounted := mountAt(r.point); mounted && !waitFor(5*time.Second, func() bool { return isDead(r.point) }) {
		// A daemon that could not finish dying: the remount aborts it.
		r.hung++
	}
	d := mountDaemon(t, r.storeDir, r.point)
	if w != nil {
		handle := matrixLate[w]
		delete(matrixLate, w)
		deadline := time.After(20 * time.Second)
		for !w.ended {
			select {
			case line, ok := <-w.lines:
				if !ok {
					w.exitErr = w.cmd.Wait()
					w.ended = true
					break
				}
				before := r.acks
				handle(line)
				if r.acks != before {
					// An ack that came late: its change is no longer in
					// flight.
					r.inflight = r.inflight[:0]
				}
			case <-deadline:
				t.Fatalf("the writer is still blocked after the remount")
			}
		}
		w.check(r.storeDir)
	}
	if len(r.inflight) > 0 {
		r.inFlight++
	}
	return d
}

// read returns what key holds through the mount.
func (r *matrixRun) read(scope, key string) (kstate, error) {
	p := filepath.Join(r.point, scope, key)
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return kstate{}, nil
	}
	if err != nil {
		return kstate{}, err
	}
	st := kstate{hash: hashOf(b)}
	buf := make([]byte, 256)
	if n, err := unix.Getxattr(p, "user.iris.content_type", buf); err == nil {
		st.ct = string(buf[:n])
	}
	if n, err := unix.Getxattr(p, "user.iris.ttl", buf); err == nil {
		st.ttl = string(buf[:n])
	}
	return st, nil
}

// matches reports whether what a key holds is want (content type and TTL
// compared where want has them).
func matches(got, want kstate) bool {
	if got.hash != want.hash {
		return false
	}
	return want.hash == "" || (want.ct == "" || got.ct == want.ct) && (want.ttl == "" || got.ttl == want.ttl)
}

// verify checks the artifacts scope against the model through the new
// mount, adopts what in-flight changes left, and runs fsck.
func (r *matrixRun) verify(path string) bool {
	t := r.t
	t.Helper()
	keys := map[string]bool{}
	for k := range r.model {
		keys[k] = true
	}
	for _, c := range r.inflight {
		for _, k := range c.keys {
			keys[k] = true
		}
	}
	got := map[string]kstate{}
	for k := range keys {
		st, err := r.read(matrixScope, k)
		if err != nil {
			t.Errorf("after killing %s: read %s: %v", path, k, err)
			return false
		}
		got[k] = st
	}
	// A change in flight left its keys all as before or all as announced.
	inChange := map[string]bool{}
	for _, c := range r.inflight {
		allOld, allNew := true, true
		for i, k := range c.keys {
			inChange[k] = true
			allOld = allOld && matches(got[k], r.model[k])
			allNew = allNew && matches(got[k], c.states[i])
		}
		switch {
		case allNew:
			r.apply(c)
		case !allOld:
			var desc []string
			for i, k := range c.keys {
				desc = append(desc, fmt.Sprintf("%s holds %s (before: %s, announced: %s)", k, got[k].short(), r.model[k].short(), c.states[i].short()))
			}
			t.Errorf("after killing %s: a change in flight is half done: %s", path, strings.Join(desc, "; "))
		}
	}
	for k := range keys {
		if inChange[k] {
			continue
		}
		if want := r.model[k]; !matches(got[k], want) {
			t.Errorf("after killing %s: %s holds %s, want %s", path, k, got[k].short(), want.short())
		}
	}
	r.inflight = r.inflight[:0]
	names, err := readDirNames(filepath.Join(r.point, matrixScope))
	if err != nil {
		t.Fatalf("after killing %s: readdir: %v", path, err)
	}
	n := 0
	for _, name := range names {
		if name == "_index.json" || slices.Contains(r.corrupt, name) {
			continue
		}
		n++
		if _, ok := r.model[name]; !ok {
			t.Errorf("after killing %s: the mount lists %s, which no acknowledged change wrote", path, name)
		}
	}
	if n != len(r.model) {
		t.Errorf("after killing %s: the mount lists %d keys, want %d", path, n, len(r.model))
	}
	switch path {
	case "prune":
		r.verifyPrune()
	case "seed":
		r.verifySeed()
	case "fsck-repair":
		r.verifyRepair()
	case "clear":
		r.verifyClear()
	}
	if res := runCLI(t, nil, "--store", r.storeDir, "fsck"); res.code != 0 || !strings.HasSuffix(res.stdout, ": clean\n") {
		t.Errorf("after killing %s: fsck through the daemon: %s", path, res)
	}
	return !t.Failed()
}

// verifyPrune: expired entries are invisible, and gone once a prune
// returned 0.
func (r *matrixRun) verifyPrune() {
	t := r.t
	for i := range 150 {
		if _, err := os.Stat(filepath.Join(r.point, matrixScope, fmt.Sprintf("exp-%d", i))); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after killing prune: exp-%d: %v, want ENOENT", i, err)
		}
	}
	var st struct {
		Scopes []struct {
			Scope       string `json:"scope"`
			ExpiredKeys int    `json:"expired_keys"`
		} `json:"scopes"`
	}
	out := mustCLI(t, nil, "--store", r.storeDir, "stats", "--json")
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatal(err)
	}
	for _, sc := range st.Scopes {
		if sc.Scope == matrixScope && r.acks > 0 && sc.ExpiredKeys != 0 && r.lastAdminAcked {
			t.Errorf("after an acknowledged prune: %d expired keys left", sc.ExpiredKeys)
		}
	}
	// Leave nothing expired for the next prune to find.
	mustCLI(t, nil, "--store", r.storeDir, "prune")
}

// verifySeed: each set holds the stale text or the canonical one, and the
// canonical one once a seed returned 0; a second seed completes it.
func (r *matrixRun) verifySeed() {
	t := r.t
	for _, set := range instructions.Canonical() {
		got, err := r.read(instructions.Scope, set.Key)
		if err != nil {
			t.Errorf("after killing seed: read %s: %v", set.Key, err)
			continue
		}
		stale := hashOf([]byte(fmt.Sprintf("stale %s %d\n", set.Key, r.seedKills)))
		canonical := hashOf(set.Content)
		switch {
		case got.hash == canonical:
		case got.hash == stale && !r.lastAdminAcked:
		default:
			t.Errorf("after killing seed (acknowledged: %v): %s holds %s, want the canonical %s", r.lastAdminAcked, set.Key, got.short(), canonical[:12])
		}
	}
	mustCLI(t, nil, "--store", r.storeDir, "seed")
	for _, set := range instructions.Canonical() {
		if got, _ := r.read(instructions.Scope, set.Key); got.hash != hashOf(set.Content) {
			t.Errorf("after a second seed: %s holds %s", set.Key, got.short())
		}
	}
}

// verifyRepair: a corrupt value never reads as other bytes (EIO, or gone
// once repaired); fsck finds nothing but the corruption a killed repair
// left, and a second repair clears it.
func (r *matrixRun) verifyRepair() {
	t := r.t
	for _, key := range r.corrupt {
		_, err := os.ReadFile(filepath.Join(r.point, matrixScope, key))
		switch {
		case errors.Is(err, os.ErrNotExist):
		case errors.Is(err, syscall.EIO) && !r.lastAdminAcked:
		default:
			t.Errorf("after killing fsck --repair (acknowledged: %v): read %s: %v, want ENOENT (repaired) or EIO", r.lastAdminAcked, key, err)
		}
	}
	res := runCLI(t, nil, "--store", r.storeDir, "fsck", "--json")
	var rep store.FsckReport
	if err := json.Unmarshal([]byte(res.stdout), &rep); err != nil {
		t.Fatalf("fsck --json: %v (%s)", err, res)
	}
	for _, p := range rep.Problems {
		// A repair killed after its commit may leave a quarantined value's
		// file in blobs/ too, unreferenced: space, not data.
		if p.Kind == store.ProblemOrphanBlob && !r.lastAdminAcked {
			continue
		}
		if p.Kind != store.ProblemHashMismatch || !slices.Contains(r.corrupt, p.Key) || r.lastAdminAcked {
			t.Errorf("after killing fsck --repair (acknowledged: %v): fsck: %s", r.lastAdminAcked, p)
		}
	}
	if res := runCLI(t, nil, "--store", r.storeDir, "fsck", "--repair"); res.code != 0 {
		t.Errorf("a second fsck --repair: %s", res)
	}
	for _, key := range r.corrupt {
		if _, err := os.Stat(filepath.Join(r.point, matrixScope, key)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("after a second fsck --repair: %s: %v, want ENOENT (dropped)", key, err)
		}
	}
	r.corrupt = r.corrupt[:0]
}

// writeKey writes a value through the mount (the daemon is healthy).
func (r *matrixRun) writeKey(key string, b []byte, ttl string) {
	t := r.t
	t.Helper()
	p := filepath.Join(r.point, matrixScope, key)
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	st := kstate{hash: hashOf(b)}
	if ttl != "" {
		if err := unix.Setxattr(p, "user.iris.ttl", []byte(ttl), 0); err != nil {
			t.Fatal(err)
		}
		d, _ := time.ParseDuration(ttl)
		st.ttl = d.String()
	}
	if prev, ok := r.model[key]; ok && prev.ct != "" {
		st.ct = prev.ct
	}
	r.model[key] = st
}

// adminCall makes a request to the daemon's admin socket (the route the
// CLI's prune, seed and fsck take) and kills the daemon a random moment
// into it: the delay is drawn up to the duration of the last such request
// that completed (first guess: guess), so that most kills land while the
// daemon works on it. It reports whether the request succeeded.
func (r *matrixRun) adminCall(d *daemon, path string, guess time.Duration, call func(ctx context.Context, c *api.Client) error) bool {
	t := r.t
	t.Helper()
	spread := guess
	if last, ok := r.adminDur[path]; ok {
		spread = last + last/4
	}
	client := api.NewSocketClient(api.SocketPath(r.storeDir))
	defer client.HTTP.CloseIdleConnections()
	done := make(chan error, 1)
	start := time.Now()
	go func() { done <- call(context.Background(), client) }()
	select {
	case err := <-done: // finished before the kill
		r.adminDur[path] = time.Since(start)
		r.killDaemon(d)
		return err == nil
	case <-time.After(time.Duration(r.rng.Int64N(int64(spread) + 1))):
	}
	r.killDaemon(d)
	select {
	case err := <-done:
		if err == nil {
			r.adminDur[path] = time.Since(start)
		}
		return err == nil
	case <-time.After(30 * time.Second):
		t.Fatalf("the %s request did not end after the daemon was killed", path)
	}
	return false
}

// adminKill kills the daemon in the middle of prune, seed or fsck --repair
// through its admin socket.
func (r *matrixRun) adminKill(d *daemon, path string) {
	t := r.t
	t.Helper()
	switch path {
	case "prune":
		// Entries that expire before the prune, beside live ones.
		for i := range 150 {
			b := make([]byte, 512+r.rng.IntN(8<<10))
			rand.NewChaCha8([32]byte{byte(i), byte(r.kills), 7}).Read(b)
			r.writeKey(fmt.Sprintf("exp-%d", i), b, "1s")
		}
		time.Sleep(1100 * time.Millisecond)
		for i := range 150 {
			delete(r.model, fmt.Sprintf("exp-%d", i)) // expired: gone either way
		}
		r.adminOutcome(r.adminCall(d, path, 40*time.Millisecond, func(ctx context.Context, c *api.Client) error {
			_, err := c.Prune(ctx)
			return err
		}))
	case "seed":
		// The sets are out of date: seed must replace them all.
		r.seedKills = r.kills
		for _, set := range instructions.Canonical() {
			p := filepath.Join(r.point, instructions.Scope, set.Key)
			if err := os.WriteFile(p, []byte(fmt.Sprintf("stale %s %d\n", set.Key, r.seedKills)), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		r.adminOutcome(r.adminCall(d, path, 30*time.Millisecond, func(ctx context.Context, c *api.Client) error {
			_, err := c.Seed(ctx, false)
			return err
		}))
	case "rm":
		r.rmKill(d)
	case "clear":
		r.clearKill(d)
	case "fsck-repair":
		// Values that fail verification, among many fsck must read. The
		// ones corrupted below are too large to ride in the index journal:
		// a replay of the journal would write a small one's file again
		// from the record, and heal it.
		for i := range 40 {
			b := make([]byte, 64<<10)
			if i%13 == 0 {
				b = make([]byte, index.JournalMaxAttach+1)
			}
			rand.NewChaCha8([32]byte{byte(i), byte(r.kills), 9}).Read(b)
			r.writeKey(fmt.Sprintf("victim-%d", i), b, "")
		}
		r.corrupt = r.corrupt[:0]
		for i := range 3 {
			key := fmt.Sprintf("victim-%d", i*13)
			fp, err := xattr(filepath.Join(r.point, matrixScope, key), "user.iris.fingerprint")
			if err != nil {
				t.Fatal(err)
			}
			blob := filepath.Join(r.storeDir, "blobs", fp[:2], fp)
			f, err := os.OpenFile(blob, os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := f.WriteAt([]byte("corrupt!"), 100); err != nil {
				t.Fatal(err)
			}
			f.Close()
			r.corrupt = append(r.corrupt, key)
			delete(r.model, key) // checked apart: EIO or gone, never other bytes
		}
		r.adminOutcome(r.adminCall(d, path, 150*time.Millisecond, func(ctx context.Context, c *api.Client) error {
			_, err := c.Fsck(ctx, true)
			return err
		}))
	}
}

// rmKill deletes keys of the model one by one through the admin socket
// and kills the daemon among the deletes: each acknowledged delete is
// gone, the one in flight may be either way, the rest are untouched.
func (r *matrixRun) rmKill(d *daemon) {
	t := r.t
	t.Helper()
	for i := 0; len(r.model) < 20; i++ {
		b := make([]byte, 256+r.rng.IntN(16<<10))
		rand.NewChaCha8([32]byte{byte(i), byte(r.kills), 13}).Read(b)
		r.writeKey(fmt.Sprintf("rm-%d-%d", r.kills, i), b, "")
	}
	keys := slices.Sorted(maps.Keys(r.model))
	r.rng.Shuffle(len(keys), func(i, j int) { keys[i], keys[j] = keys[j], keys[i] })
	keys = keys[:min(len(keys), 40)]
	var mu sync.Mutex
	deleted, started := 0, 0
	acked := r.adminCall(d, "rm", 20*time.Millisecond, func(ctx context.Context, c *api.Client) error {
		for _, k := range keys {
			mu.Lock()
			started++
			mu.Unlock()
			if err := c.Delete(ctx, matrixScope, k); err != nil {
				return err
			}
			mu.Lock()
			deleted++
			mu.Unlock()
		}
		return nil
	})
	r.adminOutcome(acked)
	mu.Lock()
	defer mu.Unlock()
	for _, k := range keys[:deleted] {
		delete(r.model, k)
	}
	r.inflight = r.inflight[:0]
	if started > deleted {
		r.inflight = append(r.inflight, mchange{keys: []string{keys[deleted]}, states: []kstate{{}}})
	}
}

// clearKill fills clearScope and kills the daemon while it clears it.
func (r *matrixRun) clearKill(d *daemon) {
	t := r.t
	t.Helper()
	r.clearWant = map[string]string{}
	for i := range clearKeys {
		b := make([]byte, 128+r.rng.IntN(4<<10))
		rand.NewChaCha8([32]byte{byte(i), byte(r.kills), 17}).Read(b)
		key := fmt.Sprintf("c-%d", i)
		if err := os.WriteFile(filepath.Join(r.point, clearScope, key), b, 0o644); err != nil {
			t.Fatal(err)
		}
		r.clearWant[key] = hashOf(b)
	}
	r.adminOutcome(r.adminCall(d, "clear", 10*time.Millisecond, func(ctx context.Context, c *api.Client) error {
		_, err := c.Clear(ctx, clearScope)
		return err
	}))
}

// verifyClear: the cleared scope holds all its keys as written or none,
// and none once a clear returned 0.
func (r *matrixRun) verifyClear() {
	t := r.t
	present := 0
	for key, want := range r.clearWant {
		got, err := r.read(clearScope, key)
		if err != nil {
			t.Errorf("after killing clear: read %s: %v", key, err)
			continue
		}
		switch got.hash {
		case "":
		case want:
			present++
		default:
			t.Errorf("after killing clear: %s holds %s, want %s or nothing", key, got.short(), want[:12])
		}
	}
	names, err := readDirNames(filepath.Join(r.point, clearScope))
	if err != nil {
		t.Fatal(err)
	}
	if listed := len(names) - 1; listed != present { // _index.json
		t.Errorf("after killing clear: %d keys listed, %d readable", listed, present)
	}
	switch {
	case present != 0 && present != len(r.clearWant):
		t.Errorf("after killing clear (acknowledged: %v): %d of %d keys left: a clear is all or nothing", r.lastAdminAcked, present, len(r.clearWant))
	case present != 0 && r.lastAdminAcked:
		t.Errorf("after an acknowledged clear: %d keys left", present)
	}
	mustCLI(t, nil, "--store", r.storeDir, "clear", clearScope)
}

func xattr(path, name string) (string, error) {
	buf := make([]byte, 256)
	n, err := unix.Getxattr(path, name, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// adminOutcome records how an admin request ended.
func (r *matrixRun) adminOutcome(acked bool) {
	r.lastAdminAcked = acked
	if acked {
		r.acks++
	} else {
		r.adminMid++
	}
}

// cliKills kills offline `iriskvfs put`s at random moments (no daemon).
func (r *matrixRun) cliKills() {
	t := r.t
	t.Helper()
	if res := runCLI(t, nil, "unmount", r.point); res.code != 0 {
		t.Fatalf("unmount: %s", res)
	}
	for i := range 3 {
		key := fmt.Sprintf("cli-%d", r.rng.IntN(6))
		b := make([]byte, r.rng.IntN(6<<20))
		rand.NewChaCha8([32]byte{byte(i), byte(r.kills), 11}).Read(b)
		ct := fmt.Sprintf("application/x-cli-%d", r.rng.IntN(100))
		want := kstate{hash: hashOf(b), ct: ct, ttl: "6h0m0s"}
		cmd := exec.Command(cliPath(t), "--store", r.storeDir, "put", matrixScope, key, "-", "--ttl", "6h", "--content-type", ct)
		cmd.Stdin = bytes.NewReader(b)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		time.Sleep(time.Duration(r.rng.IntN(150)) * time.Millisecond)
		_ = cmd.Process.Signal(syscall.SIGKILL)
		r.kills++
		err := cmd.Wait()
		var ee *exec.ExitError
		switch {
		case err == nil:
			r.apply(mchange{keys: []string{key}, states: []kstate{want}})
			r.acks++
		case errors.As(err, &ee) && ee.Sys().(syscall.WaitStatus).Signal() == syscall.SIGKILL:
			r.inflight = append(r.inflight[:0], mchange{keys: []string{key}, states: []kstate{want}})
		default:
			t.Fatalf("iriskvfs put failed: %v", err)
		}
		// Check offline before the next put: old or new, fsck clean.
		s, err := store.Open(r.storeDir, store.Options{})
		if err != nil {
			t.Fatalf("open after killing the CLI: %v", err)
		}
		got := kstate{}
		if v, err := s.Open(matrixScope, key); err == nil {
			h := sha256.New()
			if _, err := io.Copy(h, v.Reader()); err != nil {
				t.Errorf("after killing the CLI: read %s: %v", key, err)
			}
			got = kstate{hash: hex.EncodeToString(h.Sum(nil)), ct: v.Entry.ContentType, ttl: v.Entry.TTL.String()}
			v.Close()
		} else if !errors.Is(err, store.ErrNotFound) {
			t.Errorf("after killing the CLI: read %s: %v", key, err)
		}
		switch {
		case len(r.inflight) > 0 && matches(got, want):
			r.apply(r.inflight[0])
		case !matches(got, r.model[key]):
			t.Errorf("after killing the CLI: %s holds %s, want %s (or, killed, %s)", key, got.short(), r.model[key].short(), want.short())
		}
		r.inflight = r.inflight[:0]
		rep, err := s.Fsck(false)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range rep.Problems {
			t.Errorf("after killing the CLI: fsck: %s", p)
		}
		s.Close()
	}
}
