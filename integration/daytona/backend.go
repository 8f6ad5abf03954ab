package daytona

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/store"
)

// Backend is an api.Backend over the cache of one Daytona sandbox: values
// are read, written and deleted as files of the mount through the toolbox
// file-system API; listings, stats and the administrative commands run the
// installed CLI through the process API. Every call first makes sure the
// sandbox is started and the cache mounted (a stopped sandbox loses its
// mount). An unknown sandbox is an *api.Error with Status 404; one that
// cannot be reached, 502.
type Backend struct {
	Client    *Client
	SandboxID string
	Layout    Layout
	// CheckEvery is how long a successful readiness check is trusted
	// (default 10 s).
	CheckEvery time.Duration

	mu      sync.Mutex
	tb      *Toolbox
	checked time.Time
}

var _ api.Backend = (*Backend)(nil)

// NewBackend returns the backend of sandbox id, with the default layout.
func NewBackend(c *Client, id string) *Backend {
	return &Backend{Client: c, SandboxID: id}
}

// ready returns the sandbox's toolbox once the sandbox is started and the
// cache answers, mounting it if needed (iriskvfs must be installed:
// `iriskvfs sandbox init`).
func (b *Backend) ready(ctx context.Context) (*Toolbox, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	every := b.CheckEvery
	if every <= 0 {
		every = 10 * time.Second
	}
	if b.tb != nil && time.Since(b.checked) < every {
		return b.tb, nil
	}
	if err := b.Layout.check(); err != nil {
		return nil, err
	}
	sb, _, err := b.Client.EnsureStarted(ctx, b.SandboxID)
	if err != nil {
		return nil, err
	}
	tb := b.Client.Toolbox(sb)
	if _, err := tb.Stat(ctx, b.Layout.Mount()+"/.stats"); err != nil {
		if errors.Is(err, ErrUnreachable) || !isStatus(err) {
			return nil, err
		}
		// 404: not mounted; 400: a dead mount (ENOTCONN).
		if err := tb.mount(ctx, b.Layout); err != nil {
			return nil, fmt.Errorf("sandbox %s: the cache is not mounted and mounting it failed (run `iriskvfs sandbox init %s`): %w", b.SandboxID, b.SandboxID, err)
		}
		if _, err := tb.Stat(ctx, b.Layout.Mount()+"/.stats"); err != nil {
			return nil, fmt.Errorf("sandbox %s: the cache does not answer after mounting: %w", b.SandboxID, err)
		}
	}
	b.tb, b.checked = tb, time.Now()
	return tb, nil
}

// forget makes the next call check the sandbox again.
func (b *Backend) forget() {
	b.mu.Lock()
	b.tb = nil
	b.mu.Unlock()
}

func isStatus(err error) bool {
	var e *Error
	return errors.As(err, &e)
}

// do runs fn with a ready toolbox; a failure to reach the sandbox is
// retried once after a fresh readiness check (it may have been stopped).
func (b *Backend) do(ctx context.Context, fn func(*Toolbox) error) error {
	tb, err := b.ready(ctx)
	if err != nil {
		return b.apiErr(err)
	}
	err = fn(tb)
	if errors.Is(err, ErrUnreachable) {
		b.forget()
		if tb, err = b.ready(ctx); err != nil {
			return b.apiErr(err)
		}
		err = fn(tb)
	}
	return b.apiErr(err)
}

// apiErr maps an error to the *api.Error the routes report.
func (b *Backend) apiErr(err error) error {
	var ae *api.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, ErrSandboxNotFound):
		return &api.Error{Status: http.StatusNotFound, Code: "sandbox_not_found", Message: err.Error()}
	case errors.Is(err, ErrUnreachable):
		return &api.Error{Status: http.StatusBadGateway, Code: "sandbox_unreachable", Message: err.Error()}
	}
	var de *Error
	if errors.As(err, &de) {
		switch {
		case de.Status == http.StatusNotFound:
			return &api.Error{Status: http.StatusNotFound, Code: "not_found", Message: store.ErrNotFound.Error()}
		case de.Status == http.StatusUnauthorized || de.Status == http.StatusForbidden:
			return &api.Error{Status: http.StatusBadGateway, Code: "sandbox_unreachable", Message: err.Error()}
		}
		if e := fromMessage(de.Message); e != nil {
			return e
		}
		return &api.Error{Status: http.StatusBadGateway, Code: "sandbox_error", Message: err.Error()}
	}
	return &api.Error{Status: http.StatusInternalServerError, Code: "internal", Message: err.Error()}
}

// messageTable maps what the CLI (or a failed write through the mount)
// says to a status, as integration/api's table maps the store's errors.
var messageTable = []struct {
	text   string
	status int
	code   string
}{
	{store.ErrNotFound.Error(), http.StatusNotFound, "not_found"},
	{store.ErrNameTooLong.Error(), http.StatusBadRequest, "bad_key"},
	{store.ErrBadKey.Error(), http.StatusBadRequest, "bad_key"},
	{store.ErrBadScope.Error(), http.StatusBadRequest, "bad_scope"},
	{store.ErrBadArgument.Error(), http.StatusBadRequest, "bad_argument"},
	{store.ErrTooLarge.Error(), http.StatusRequestEntityTooLarge, "too_large"},
	{"file too large", http.StatusRequestEntityTooLarge, "too_large"},
	{store.ErrOverQuota.Error(), http.StatusInsufficientStorage, "quota_exceeded"},
	{"disk quota exceeded", http.StatusInsufficientStorage, "quota_exceeded"},
	{store.ErrNoSpace.Error(), http.StatusInsufficientStorage, "no_space"},
	{"no space left on device", http.StatusInsufficientStorage, "no_space"},
	{store.ErrIntegrity.Error(), http.StatusInternalServerError, "integrity"},
	{store.ErrLocked.Error(), http.StatusServiceUnavailable, "locked"},
}

func fromMessage(msg string) *api.Error {
	for _, m := range messageTable {
		if strings.Contains(msg, m.text) {
			return &api.Error{Status: m.status, Code: m.code, Message: msg}
		}
	}
	return nil
}

// cliError is a failed run of the CLI in the sandbox.
func cliError(what string, res ExecResult) error {
	msg := strings.TrimSpace(res.Output)
	if i := strings.LastIndex(msg, "iriskvfs: "); i >= 0 {
		msg = firstLine(msg[i+len("iriskvfs: "):])
	}
	msg = strings.TrimSuffix(msg, " (see 'iriskvfs --help')")
	if e := fromMessage(msg); e != nil {
		return e
	}
	if res.ExitCode == 2 {
		return &api.Error{Status: http.StatusBadRequest, Code: "bad_argument", Message: msg}
	}
	return &api.Error{Status: http.StatusInternalServerError, Code: "internal", Message: fmt.Sprintf("%s in the sandbox failed (exit %d): %s", what, res.ExitCode, oneLine(msg))}
}

// cli runs the installed CLI with args (shell-safe words; values go in env
// and are referred to as "$NAME") and returns its output, or the error it
// reported. okCodes are exit codes that are not failures (besides 0).
func (b *Backend) cli(ctx context.Context, tb *Toolbox, args string, env map[string]string, timeout time.Duration, okCodes ...int) (ExecResult, error) {
	res, err := tb.ExecEnv(ctx, shC(b.Layout.CLI(args)), env, timeout)
	if err != nil {
		return res, err
	}
	if res.ExitCode != 0 {
		ok := false
		for _, c := range okCodes {
			ok = ok || c == res.ExitCode
		}
		if !ok {
			return res, cliError("iriskvfs "+firstWord(args), res)
		}
	}
	return res, nil
}

func firstWord(s string) string {
	f := strings.Fields(s)
	if len(f) == 0 {
		return ""
	}
	return f[0]
}

// jsonOf decodes the JSON document in out (skipping anything before it,
// such as a log line).
func jsonOf(out string, v any) error {
	i := strings.IndexAny(out, "[{")
	if i < 0 {
		return fmt.Errorf("no JSON in the output: %s", oneLine(out))
	}
	return json.NewDecoder(strings.NewReader(out[i:])).Decode(v)
}

func checkScope(scope string) error {
	if err := api.CheckScope("", scope); err != nil {
		return api.ErrorOf(err)
	}
	return nil
}

// checkKey refuses what could not be a key before it becomes a path in the
// sandbox (the API server checks too; this backend may be used without it).
func checkKey(scope, key string) error {
	if err := api.CheckAddress("", scope, key); err != nil {
		return api.ErrorOf(err)
	}
	return nil
}

func (b *Backend) keyPath(scope, key string) string {
	return b.Layout.Mount() + "/" + scope + "/" + key
}

// Put writes the value: as a file of the mount when it has no options and
// is not empty (the toolbox cannot upload empty files), else by uploading
// it beside the store and running `iriskvfs put`.
func (b *Backend) Put(ctx context.Context, scope, key string, body io.Reader, o api.PutOptions) (api.Entry, error) {
	if err := checkKey(scope, key); err != nil {
		return api.Entry{}, err
	}
	tmp, err := os.CreateTemp("", "iriskvfs-put-*")
	if err != nil {
		return api.Entry{}, err
	}
	defer os.Remove(tmp.Name())
	n, err := io.Copy(tmp, body)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return api.Entry{}, err
	}
	var entry api.Entry
	err = b.do(ctx, func(tb *Toolbox) error {
		simple := n > 0 && o.TTL == 0 && o.ContentType == "" && len(o.Meta) == 0
		if simple {
			if err := tb.Upload(ctx, tmp.Name(), b.keyPath(scope, key)); err != nil {
				var de *Error
				if errors.As(err, &de) && strings.Contains(de.Message, "mkdir "+b.Layout.Mount()+"/"+scope) {
					// The daemon's MkdirAll of a scope the mount does not have.
					return &api.Error{Status: http.StatusBadRequest, Code: "bad_scope", Message: fmt.Sprintf("%s: %q", store.ErrBadScope, scope)}
				}
				return err
			}
		} else {
			src := "/dev/null"
			if n > 0 {
				src = b.Layout.dir() + "/tmp/put-" + randomHex()
				if err := tb.Upload(ctx, tmp.Name(), src); err != nil {
					return err
				}
			}
			args := fmt.Sprintf("put %s %s %s", scope, key, src)
			env := map[string]string{}
			if o.TTL > 0 {
				args += " --ttl " + o.TTL.String()
			}
			if o.ContentType != "" {
				env["IRISKVFS_PUT_CT"] = o.ContentType
				args += ` --content-type "$IRISKVFS_PUT_CT"`
			}
			names := make([]string, 0, len(o.Meta))
			for k := range o.Meta {
				names = append(names, k)
			}
			sort.Strings(names)
			for i, k := range names {
				v := fmt.Sprintf("IRISKVFS_PUT_META_%d", i)
				env[v] = k + "=" + o.Meta[k]
				args += ` --meta "$` + v + `"`
			}
			if src != "/dev/null" {
				args += "; rc=$?; rm -f " + src + "; exit $rc"
			}
			if _, err := b.cli(ctx, tb, args, env, 2*time.Minute); err != nil {
				return err
			}
		}
		e, err := b.entry(ctx, tb, scope, key)
		entry = e
		return err
	})
	return entry, err
}

// entry finds one entry through `ls --json SCOPE`.
func (b *Backend) entry(ctx context.Context, tb *Toolbox, scope, key string) (api.Entry, error) {
	es, err := b.list(ctx, tb, scope)
	if err != nil {
		return api.Entry{}, err
	}
	for _, e := range es {
		if e.Key == key {
			return e, nil
		}
	}
	return api.Entry{}, &api.Error{Status: http.StatusNotFound, Code: "not_found", Message: store.ErrNotFound.Error()}
}

func (b *Backend) list(ctx context.Context, tb *Toolbox, scope string) ([]api.Entry, error) {
	res, err := b.cli(ctx, tb, "ls --json "+scope, nil, time.Minute)
	if err != nil {
		return nil, err
	}
	es := []api.Entry{}
	if err := jsonOf(res.Output, &es); err != nil {
		return nil, fmt.Errorf("iriskvfs ls: %w", err)
	}
	return es, nil
}

// Get reads the value as a file of the mount (the mount verifies it).
func (b *Backend) Get(ctx context.Context, scope, key string) (api.Entry, io.ReadCloser, error) {
	if err := checkKey(scope, key); err != nil {
		return api.Entry{}, nil, err
	}
	var entry api.Entry
	var data []byte
	err := b.do(ctx, func(tb *Toolbox) error {
		var err error
		if entry, err = b.entry(ctx, tb, scope, key); err != nil {
			return err
		}
		data, err = tb.ReadFile(ctx, b.keyPath(scope, key))
		return err
	})
	if err != nil {
		return api.Entry{}, nil, err
	}
	return entry, io.NopCloser(bytes.NewReader(data)), nil
}

// List lists the live entries of scope (all scopes for "").
func (b *Backend) List(ctx context.Context, scope string) ([]api.Entry, error) {
	if scope != "" {
		if err := checkScope(scope); err != nil {
			return nil, err
		}
	}
	var es []api.Entry
	err := b.do(ctx, func(tb *Toolbox) error {
		var err error
		es, err = b.list(ctx, tb, scope)
		return err
	})
	return es, err
}

// Delete removes the key's file from the mount.
func (b *Backend) Delete(ctx context.Context, scope, key string) error {
	if err := checkKey(scope, key); err != nil {
		return err
	}
	return b.do(ctx, func(tb *Toolbox) error {
		return tb.Delete(ctx, b.keyPath(scope, key), false)
	})
}

// Stats runs `iriskvfs stats --json`.
func (b *Backend) Stats(ctx context.Context) (api.Stats, error) {
	var st api.Stats
	err := b.do(ctx, func(tb *Toolbox) error {
		res, err := b.cli(ctx, tb, "stats --json", nil, time.Minute)
		if err != nil {
			return err
		}
		return jsonOf(res.Output, &st)
	})
	return st, err
}

var (
	pruneRE = regexp.MustCompile(`pruned (\d+) expired entries \(([0-9.]+) ([KMGTPE]?i?B)\), removed (\d+) unreferenced files`)
	clearRE = regexp.MustCompile(`cleared (\d+) keys`)
	seedRE  = regexp.MustCompile(`^(\S+) (\S+) \(version ([^)]*)\)(?:: (.*))?$`)
)

// Prune runs `iriskvfs prune`. The CLI prints the bytes rounded (it has no
// --json), so Bytes is approximate above 1 KiB.
func (b *Backend) Prune(ctx context.Context) (store.PruneResult, error) {
	var r store.PruneResult
	err := b.do(ctx, func(tb *Toolbox) error {
		res, err := b.cli(ctx, tb, "prune", nil, 5*time.Minute)
		if err != nil {
			return err
		}
		m := pruneRE.FindStringSubmatch(res.Output)
		if m == nil {
			return fmt.Errorf("iriskvfs prune: unexpected output: %s", oneLine(res.Output))
		}
		r.Entries, _ = strconv.Atoi(m[1])
		r.Files, _ = strconv.Atoi(m[4])
		f, _ := strconv.ParseFloat(m[2], 64)
		if p := strings.IndexByte("KMGTPE", m[3][0]); p >= 0 && m[3] != "B" {
			f *= math.Pow(1024, float64(p+1))
		}
		r.Bytes = int64(f)
		return nil
	})
	return r, err
}

// Clear runs `iriskvfs clear SCOPE`.
func (b *Backend) Clear(ctx context.Context, scope string) (int, error) {
	if err := checkScope(scope); err != nil {
		return 0, err
	}
	n := 0
	err := b.do(ctx, func(tb *Toolbox) error {
		res, err := b.cli(ctx, tb, "clear "+scope, nil, 5*time.Minute)
		if err != nil {
			return err
		}
		m := clearRE.FindStringSubmatch(res.Output)
		if m == nil {
			return fmt.Errorf("iriskvfs clear: unexpected output: %s", oneLine(res.Output))
		}
		n, _ = strconv.Atoi(m[1])
		return nil
	})
	return n, err
}

// Fsck runs `iriskvfs fsck --json [--repair]` (exit 1: problems found).
func (b *Backend) Fsck(ctx context.Context, repair bool) (*store.FsckReport, error) {
	var rep store.FsckReport
	args := "fsck --json"
	if repair {
		args += " --repair"
	}
	err := b.do(ctx, func(tb *Toolbox) error {
		res, err := b.cli(ctx, tb, args, nil, 10*time.Minute, 1)
		if err != nil {
			return err
		}
		if err := jsonOf(res.Output, &rep); err != nil {
			if res.ExitCode != 0 {
				return cliError("iriskvfs fsck", res)
			}
			return fmt.Errorf("iriskvfs fsck: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

// Seed runs `iriskvfs seed [--force]`.
func (b *Backend) Seed(ctx context.Context, force bool) ([]instructions.Action, error) {
	args := "seed"
	if force {
		args += " --force"
	}
	var actions []instructions.Action
	err := b.do(ctx, func(tb *Toolbox) error {
		res, err := b.cli(ctx, tb, args, nil, 5*time.Minute)
		if err != nil {
			return err
		}
		actions = []instructions.Action{}
		for _, line := range strings.Split(res.Output, "\n") {
			if m := seedRE.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
				actions = append(actions, instructions.Action{Did: m[1], Key: m[2], Version: m[3], Reason: m[4]})
			}
		}
		return nil
	})
	return actions, err
}

func randomHex() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
