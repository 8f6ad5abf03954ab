package api_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

const testToken = "s3cr3t-T0KEN-value-42"

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// clock is a settable clock for the store, to cross TTLs.
type clock struct{ off atomic.Int64 }

func (c *clock) Now() time.Time          { return time.Now().Add(time.Duration(c.off.Load())) }
func (c *clock) Advance(d time.Duration) { c.off.Add(int64(d)) }

type env struct {
	t     *testing.T
	dir   string // the test's root: the store is dir/store
	store *store.Store
	srv   *httptest.Server
	logs  *syncBuffer
	token string
	clock *clock
}

type envOpts struct {
	token   string
	policy  string // YAML; "" for the default policy
	maxBody int64
	backend func(api.Local) api.Backend
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	root := t.TempDir()
	p := quota.Default()
	if o.policy != "" {
		var err error
		if p, err = quota.Parse([]byte(o.policy)); err != nil {
			t.Fatal(err)
		}
	}
	c := &clock{}
	s, err := store.Open(filepath.Join(root, "store"), store.Options{Policy: p, Now: c.Now, TrackReads: []string{instructions.Scope}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	var b api.Backend = api.Local{Store: s}
	if o.backend != nil {
		b = o.backend(api.Local{Store: s})
	}
	logs := &syncBuffer{}
	h := api.NewServer(api.ServerConfig{
		Backend: b, Token: o.token, MaxBody: o.maxBody,
		Log: slog.New(slog.NewJSONHandler(logs, nil)),
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return &env{t: t, dir: root, store: s, srv: srv, logs: logs, token: o.token, clock: c}
}

type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("response %d %q: %v", r.status, r.body, err)
	}
}

// errorCode checks that r is a documented JSON error and returns its code.
func (r resp) errorCode(t *testing.T) string {
	t.Helper()
	code, err := checkErrorShape(r.status, r.header, r.body)
	if err != nil {
		t.Fatal(err)
	}
	return code
}

func checkErrorShape(status int, h http.Header, body []byte) (string, error) {
	if ct := h.Get("Content-Type"); ct != "application/json" {
		return "", errors.New("error response with Content-Type " + ct + ": " + string(body))
	}
	var env struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
		} `json:"error"`
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(&env); err != nil || env.Error == nil || env.Error.Code == "" || env.Error.Message == "" {
		return "", errors.New("status " + http.StatusText(status) + ": body is not {\"error\":{\"code\",\"message\"}}: " + string(body))
	}
	return env.Error.Code, nil
}

// do sends a request with the env's token (auth "" uses it; "-" sends none).
func (e *env) do(method, target string, body io.Reader, auth string) resp {
	e.t.Helper()
	req, err := http.NewRequest(method, e.srv.URL+target, body)
	if err != nil {
		e.t.Fatal(err)
	}
	switch {
	case auth == "" && e.token != "":
		req.Header.Set("Authorization", "Bearer "+e.token)
	case auth != "" && auth != "-":
		req.Header.Set("Authorization", auth)
	}
	res, err := e.srv.Client().Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, target, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		e.t.Fatalf("%s %s: reading: %v", method, target, err)
	}
	return resp{status: res.StatusCode, header: res.Header, body: b}
}

const kv = "/api/sandboxes/local/kv-cache/"

func q(kvs ...string) string {
	v := url.Values{}
	for i := 0; i+1 < len(kvs); i += 2 {
		v.Add(kvs[i], kvs[i+1])
	}
	return "?" + v.Encode()
}

func TestServerRoutes(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken})

	// POST value
	r := e.do("POST", kv+"value"+q("scope", "task", "key", "plan.md", "content_type", "text/markdown", "ttl_hours", "2", "meta", "agent=a1"), strings.NewReader("# the plan\n"), "")
	if r.status != http.StatusCreated {
		t.Fatalf("POST value: %d %s", r.status, r.body)
	}
	var put api.Entry
	r.json(t, &put)
	if put.Scope != "task" || put.Key != "plan.md" || put.SizeBytes != 11 || put.ContentType != "text/markdown" ||
		put.TTLHours != 2 || put.ExpiresAt == nil || put.Metadata["agent"] != "a1" || len(put.Fingerprint) != 64 {
		t.Errorf("POST value: entry %+v", put)
	}

	// GET value: raw, Content-Type from the entry, ETag = fingerprint.
	r = e.do("GET", kv+"value"+q("scope", "task", "key", "plan.md"), nil, "")
	if r.status != 200 || string(r.body) != "# the plan\n" {
		t.Fatalf("GET value: %d %q", r.status, r.body)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/markdown" {
		t.Errorf("GET value: Content-Type %q", ct)
	}
	if et := r.header.Get("ETag"); et != `"`+put.Fingerprint+`"` {
		t.Errorf("GET value: ETag %q, want the fingerprint %q", et, put.Fingerprint)
	}
	if r.header.Get("Content-Length") != "11" || r.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("GET value: headers %v", r.header)
	}

	// A second key with a ttl and another without (the scope's TTL).
	if r := e.do("POST", kv+"value"+q("scope", "task", "key", "b.json", "ttl", "90m"), strings.NewReader(`{"x":1}`), ""); r.status != 201 {
		t.Fatalf("POST value ttl: %d %s", r.status, r.body)
	}
	if r := e.do("POST", kv+"value"+q("scope", "project", "key", "readme"), strings.NewReader("p"), ""); r.status != 201 {
		t.Fatalf("POST value: %d %s", r.status, r.body)
	}

	// GET keys of one scope, then of all.
	var keys struct {
		Scope string      `json:"scope"`
		Keys  []api.Entry `json:"keys"`
	}
	r = e.do("GET", kv+"keys"+q("scope", "task"), nil, "")
	if r.status != 200 {
		t.Fatalf("GET keys: %d %s", r.status, r.body)
	}
	r.json(t, &keys)
	if keys.Scope != "task" || len(keys.Keys) != 2 {
		t.Errorf("GET keys?scope=task: %s", r.body)
	}
	r = e.do("GET", kv+"keys", nil, "")
	keys.Keys = nil
	r.json(t, &keys)
	if r.status != 200 || len(keys.Keys) != 3 {
		t.Errorf("GET keys: %d %s", r.status, r.body)
	}

	// GET stats.
	r = e.do("GET", kv+"stats", nil, "")
	var st api.Stats
	r.json(t, &st)
	if r.status != 200 || st.Keys != 3 || len(st.Scopes) == 0 || st.Hits+st.Misses < 1 {
		t.Errorf("GET stats: %d %s", r.status, r.body)
	}

	// seed-instructions, twice, then forced.
	var seeded struct {
		Actions []instructions.Action `json:"actions"`
	}
	r = e.do("POST", kv+"seed-instructions", nil, "")
	r.json(t, &seeded)
	if r.status != 200 || len(seeded.Actions) == 0 || seeded.Actions[0].Did != "written" {
		t.Errorf("POST seed-instructions: %d %s", r.status, r.body)
	}
	r = e.do("POST", kv+"seed-instructions", nil, "")
	r.json(t, &seeded)
	if r.status != 200 || seeded.Actions[0].Did != "unchanged" {
		t.Errorf("POST seed-instructions again: %d %s", r.status, r.body)
	}
	r = e.do("POST", kv+"seed-instructions?force_refresh=true", nil, "")
	r.json(t, &seeded)
	if r.status != 200 || seeded.Actions[0].Did != "replaced" {
		t.Errorf("POST seed-instructions?force_refresh=true: %d %s", r.status, r.body)
	}

	// fsck.
	r = e.do("POST", kv+"fsck", nil, "")
	var rep store.FsckReport
	r.json(t, &rep)
	if r.status != 200 || !rep.Clean() {
		t.Errorf("POST fsck: %d %s", r.status, r.body)
	}

	// Expiry: past b.json's 90 minutes, it is 404, and prune reclaims it.
	e.clock.Advance(100 * time.Minute)
	r = e.do("GET", kv+"value"+q("scope", "task", "key", "b.json"), nil, "")
	if r.status != 404 || r.errorCode(t) != "not_found" {
		t.Errorf("GET of an expired key: %d %s", r.status, r.body)
	}
	r = e.do("POST", kv+"prune", nil, "")
	var pr store.PruneResult
	r.json(t, &pr)
	if r.status != 200 || pr.Entries != 1 {
		t.Errorf("POST prune: %d %s", r.status, r.body)
	}

	// DELETE value, then it is gone.
	r = e.do("DELETE", kv+"value"+q("scope", "task", "key", "plan.md"), nil, "")
	if r.status != 200 || !bytes.Contains(r.body, []byte(`"deleted": true`)) {
		t.Errorf("DELETE value: %d %s", r.status, r.body)
	}
	for _, m := range []string{"GET", "DELETE"} {
		r = e.do(m, kv+"value"+q("scope", "task", "key", "plan.md"), nil, "")
		if r.status != 404 || r.errorCode(t) != "not_found" {
			t.Errorf("%s value of a deleted key: %d %s", m, r.status, r.body)
		}
	}

	// DELETE clear-scope.
	r = e.do("DELETE", kv+"clear-scope"+q("scope", "project"), nil, "")
	var cl struct {
		Cleared int `json:"cleared"`
	}
	r.json(t, &cl)
	if r.status != 200 || cl.Cleared != 1 {
		t.Errorf("DELETE clear-scope: %d %s", r.status, r.body)
	}
	if es, _ := e.store.List("project"); len(es) != 0 {
		t.Errorf("clear-scope left %d keys", len(es))
	}

	// healthz.
	r = e.do("GET", "/healthz", nil, "-")
	if r.status != 200 || strings.TrimSpace(string(r.body)) != `{"status":"ok"}` {
		t.Errorf("GET /healthz: %d %s", r.status, r.body)
	}
}

// TestServerErrors: every documented error code, and hostile input that
// must be refused before anything touches the disk.
func TestServerErrors(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken, maxBody: 64 << 10,
		policy: "scopes:\n  task: {quota: 1000B}\n  artifacts: {quota: 1MiB}\n"})
	outside := filepath.Join(e.dir, "outside")
	if err := os.WriteFile(outside, []byte("untouched"), 0o600); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, e.dir)
	long := strings.Repeat("k", 300)
	cases := []struct {
		method, target, body string
		status               int
		code                 string
	}{
		// Traversal and bad names, on every route that takes them.
		{"GET", kv + "value" + q("scope", "task", "key", "../../etc/passwd"), "", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task", "key", "../outside"), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task", "key", "/etc/passwd"), "x", 400, "bad_key"},
		{"DELETE", kv + "value" + q("scope", "task", "key", "../outside"), "", 400, "bad_key"},
		{"GET", kv + "value" + q("scope", "..", "key", "x"), "", 400, "bad_scope"},
		{"POST", kv + "value" + q("scope", "../..", "key", "outside"), "x", 400, "bad_scope"},
		{"POST", kv + "value" + q("scope", "task/../../x", "key", "y"), "x", 400, "bad_scope"},
		{"GET", kv + "keys" + q("scope", ".."), "", 400, "bad_scope"},
		{"GET", kv + "keys" + q("scope", "nosuch"), "", 400, "bad_scope"},
		{"DELETE", kv + "clear-scope" + q("scope", ".."), "", 400, "bad_scope"},
		{"DELETE", kv + "clear-scope", "", 400, "bad_scope"},
		{"POST", kv + "value" + q("scope", "task", "key", "nul\x00byte"), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "ta\x00sk", "key", "k"), "x", 400, "bad_scope"},
		{"POST", kv + "value" + q("scope", "task", "key", ""), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task"), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task", "key", long), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task", "key", ".stats"), "x", 400, "bad_key"},
		{"POST", kv + "value" + q("scope", "task", "key", "café"), "x", 400, "bad_key"},
		// Bad arguments.
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl", "abc"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl", "-1h"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl", "0"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl", "1000000h"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "abc"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "-1"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "0"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "NaN"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "+Inf"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "ttl_hours", "1e300"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "meta", "novalue"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "meta", "bad name=1"), "x", 400, "bad_argument"},
		{"POST", kv + "value" + q("scope", "task", "key", "k", "content_type", "text/\x01"), "x", 400, "bad_argument"},
		// Sizes: a body over --max-body, a value over the scope's quota,
		// and one the scope has no room left for.
		{"POST", kv + "value" + q("scope", "artifacts", "key", "big"), strings.Repeat("b", 64<<10+1), 413, "body_too_large"},
		{"POST", kv + "value" + q("scope", "task", "key", "huge"), strings.Repeat("h", 1001), 413, "too_large"},
		{"POST", kv + "value" + q("scope", "task", "key", "first"), strings.Repeat("f", 600), 201, ""},
		{"POST", kv + "value" + q("scope", "task", "key", "second"), strings.Repeat("s", 600), 507, "quota_exceeded"},
		// Missing keys.
		{"GET", kv + "value" + q("scope", "task", "key", "nosuch"), "", 404, "not_found"},
		{"DELETE", kv + "value" + q("scope", "task", "key", "nosuch"), "", 404, "not_found"},
		// Unknown sandboxes and routes, wrong methods.
		{"GET", "/api/sandboxes/other/kv-cache/stats", "", 404, "unknown_sandbox"},
		{"GET", "/api/sandboxes/local/kv-cache/nope", "", 404, "no_route"},
		{"GET", "/api/sandboxes/local/kv-cache/../../../etc/passwd", "", 404, "no_route"},
		{"GET", "/api/sandboxes/local/x/kv-cache/stats", "", 404, "no_route"},
		{"GET", "/api/sandboxes//kv-cache/stats", "", 404, "no_route"},
		{"GET", "/api/", "", 404, "no_route"},
		{"GET", "/", "", 404, "no_route"},
		{"GET", "/etc/passwd", "", 404, "no_route"},
		{"PUT", kv + "value" + q("scope", "task", "key", "k"), "x", 405, "method_not_allowed"},
		{"GET", kv + "prune", "", 405, "method_not_allowed"},
		{"GET", kv + "seed-instructions", "", 405, "method_not_allowed"},
		{"POST", kv + "stats", "", 405, "method_not_allowed"},
		{"POST", kv + "clear-scope" + q("scope", "task"), "", 405, "method_not_allowed"},
		{"PATCH", kv + "keys", "", 405, "method_not_allowed"},
		{"POST", "/healthz", "", 405, "method_not_allowed"},
		{"DELETE", "/metrics", "", 405, "method_not_allowed"},
	}
	for _, c := range cases {
		var body io.Reader
		if c.body != "" {
			body = strings.NewReader(c.body)
		}
		r := e.do(c.method, c.target, body, "")
		if r.status != c.status {
			t.Errorf("%s %q: status %d, want %d (%s)", c.method, c.target, r.status, c.status, r.body)
			continue
		}
		if c.code == "" {
			continue
		}
		if code := r.errorCode(t); code != c.code {
			t.Errorf("%s %q: code %q, want %q (%s)", c.method, c.target, code, c.code, r.body)
		}
	}
	// Nothing outside the store changed; inside it, only the one key
	// written (blob files, index and its journal).
	if b, _ := os.ReadFile(outside); string(b) != "untouched" {
		t.Errorf("the file outside the store was changed: %q", b)
	}
	after := snapshot(t, e.dir)
	for p := range after {
		if _, ok := before[p]; !ok && !strings.HasPrefix(p, "store/blobs/") && p != "store/index.db" && p != "store/index.db.journal" {
			t.Errorf("new file %s after the hostile requests", p)
		}
	}
	if es, _ := e.store.List("task"); len(es) != 1 || es[0].Key != "first" {
		t.Errorf("task holds %v, want only \"first\"", es)
	}
	// The rejected writes were counted.
	if st, _ := e.store.Stats(); st.QuotaRejects < 1 {
		t.Errorf("quota rejections %d after a 507", st.QuotaRejects)
	}
}

// snapshot lists the regular files under root.
func snapshot(t *testing.T, root string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			out[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestServerAuth(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken})
	for _, c := range []struct {
		name, auth string
	}{
		{"no header", "-"},
		{"wrong token", "Bearer wrong"},
		{"token prefix", "Bearer " + testToken[:len(testToken)-1]},
		{"token with a suffix", "Bearer " + testToken + "x"},
		{"wrong scheme", "Basic " + testToken},
		{"no scheme", testToken},
		{"scheme only", "Bearer"},
		{"empty token", "Bearer "},
	} {
		for _, target := range []string{kv + "stats", kv + "value" + q("scope", "task", "key", "k"), "/metrics", "/nowhere"} {
			r := e.do("GET", target, nil, c.auth)
			if r.status != 401 {
				t.Errorf("%s, GET %s: status %d, want 401", c.name, target, r.status)
				continue
			}
			if code := r.errorCode(t); code != "unauthorized" {
				t.Errorf("%s: code %q", c.name, code)
			}
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Errorf("%s: WWW-Authenticate %q", c.name, r.header.Get("WWW-Authenticate"))
			}
		}
	}
	// A write without the token changes nothing.
	if r := e.do("POST", kv+"value"+q("scope", "task", "key", "k"), strings.NewReader("v"), "-"); r.status != 401 {
		t.Errorf("POST without a token: %d", r.status)
	}
	if es, _ := e.store.List("task"); len(es) != 0 {
		t.Errorf("a POST without a token wrote %v", es)
	}
	// The scheme is case-insensitive; /healthz needs no token.
	if r := e.do("GET", kv+"stats", nil, "bearer "+testToken); r.status != 200 {
		t.Errorf("lower-case bearer: %d %s", r.status, r.body)
	}
	if r := e.do("GET", "/healthz", nil, "-"); r.status != 200 {
		t.Errorf("/healthz without a token: %d", r.status)
	}
	if r := e.do("GET", "/healthz", nil, "Bearer wrong"); r.status != 200 {
		t.Errorf("/healthz with a wrong token: %d", r.status)
	}
}

func TestServerNoToken(t *testing.T) {
	e := newEnv(t, envOpts{})
	if r := e.do("GET", kv+"stats", nil, "-"); r.status != 200 {
		t.Errorf("no token configured: GET stats %d %s", r.status, r.body)
	}
}

// TestServerLogs: one structured line per request, never a value, a token
// or a query string.
func TestServerLogs(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken})
	const value = "VALUE-that-must-not-be-logged"
	e.do("POST", kv+"value"+q("scope", "task", "key", "secretkey", "meta", "m=metavalue"), strings.NewReader(value), "")
	e.do("GET", kv+"value"+q("scope", "task", "key", "secretkey"), nil, "")
	e.do("GET", kv+"stats", nil, "Bearer "+testToken+"-wrong")
	e.do("GET", kv+"stats", nil, "Basic "+testToken)
	e.do("GET", "/healthz", nil, "Bearer "+testToken)
	logs := e.logs.String()
	for _, secret := range []string{testToken, value, "metavalue", "secretkey"} {
		if strings.Contains(logs, secret) {
			t.Errorf("the logs contain %q:\n%s", secret, logs)
		}
	}
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	if len(lines) != 5 {
		t.Fatalf("%d log lines, want 5:\n%s", len(lines), logs)
	}
	var first map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatalf("log line is not JSON: %s", lines[0])
	}
	if first["method"] != "POST" || first["route"] != "/api/sandboxes/{id}/kv-cache/value" || first["status"] != float64(201) || first["duration_ms"] == nil {
		t.Errorf("log line %s", lines[0])
	}
	if !strings.Contains(lines[2], `"status":401`) {
		t.Errorf("the refused request logged %s", lines[2])
	}
}

func TestServerMetrics(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken, policy: "scopes:\n  task: {quota: 100B}\n"})
	e.do("POST", kv+"value"+q("scope", "task", "key", "a"), strings.NewReader("hello"), "")
	e.do("POST", kv+"value"+q("scope", "task", "key", "b"), strings.NewReader(strings.Repeat("x", 99)), "") // 507
	e.do("GET", kv+"value"+q("scope", "task", "key", "a"), nil, "")
	e.do("GET", kv+"value"+q("scope", "task", "key", "a"), nil, "")
	e.do("GET", kv+"value"+q("scope", "task", "key", "../x"), nil, "")
	e.do("GET", kv+"stats", nil, "-")
	e.do("GET", "/no/such/route/"+strings.Repeat("z", 50), nil, "")
	r := e.do("GET", "/metrics", nil, "")
	if r.status != 200 {
		t.Fatalf("GET /metrics: %d %s", r.status, r.body)
	}
	text := string(r.body)
	for _, want := range []string{
		`iriskvfs_http_requests_total{code="201",method="POST",route="/api/sandboxes/{id}/kv-cache/value"} 1`,
		`iriskvfs_http_requests_total{code="507",method="POST",route="/api/sandboxes/{id}/kv-cache/value"} 1`,
		`iriskvfs_http_requests_total{code="200",method="GET",route="/api/sandboxes/{id}/kv-cache/value"} 2`,
		`iriskvfs_http_requests_total{code="400",method="GET",route="/api/sandboxes/{id}/kv-cache/value"} 1`,
		`iriskvfs_http_requests_total{code="401",method="GET",route="/api/sandboxes/{id}/kv-cache/stats"} 1`,
		`iriskvfs_http_requests_total{code="404",method="GET",route="other"} 1`,
		`iriskvfs_http_request_duration_seconds_bucket{code="201",method="POST",route="/api/sandboxes/{id}/kv-cache/value",le="+Inf"} 1`,
		`iriskvfs_http_request_duration_seconds_count{code="200",method="GET",route="/api/sandboxes/{id}/kv-cache/value"} 2`,
		"iriskvfs_backend_up 1",
		"iriskvfs_cache_hits_total ",
		"iriskvfs_cache_misses_total ",
		"iriskvfs_quota_rejections_total 1",
		"iriskvfs_verification_failures_total 0",
		`iriskvfs_scope_keys{scope="task"} 1`,
		`iriskvfs_scope_bytes{scope="task"} 5`,
		`iriskvfs_scope_quota_bytes{scope="task"} 100`,
		"go_goroutines ",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if strings.Contains(text, "zzzz") {
		t.Error("/metrics holds a label from a request path")
	}
	var hits, misses float64
	for _, l := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(l, "iriskvfs_cache_hits_total "); ok {
			hits = atof(t, v)
		}
		if v, ok := strings.CutPrefix(l, "iriskvfs_cache_misses_total "); ok {
			misses = atof(t, v)
		}
	}
	if hits+misses != 2 {
		t.Errorf("hits %v + misses %v, want 2 reads", hits, misses)
	}
}

func atof(t *testing.T, s string) float64 {
	var f float64
	if err := json.Unmarshal([]byte(strings.TrimSpace(s)), &f); err != nil {
		t.Fatalf("metric value %q: %v", s, err)
	}
	return f
}

func TestServerHealthzDown(t *testing.T) {
	e := newEnv(t, envOpts{token: testToken})
	e.store.Close()
	r := e.do("GET", "/healthz", nil, "-")
	if r.status != 503 || r.errorCode(t) != "unavailable" || !bytes.Contains(r.body, []byte(`"status":"unavailable"`)) {
		t.Errorf("/healthz of a closed store: %d %s", r.status, r.body)
	}
	r = e.do("GET", kv+"stats", nil, "")
	if r.status != 503 || r.errorCode(t) != "closed" {
		t.Errorf("stats of a closed store: %d %s", r.status, r.body)
	}
	r = e.do("GET", "/metrics", nil, "")
	if r.status != 200 || !bytes.Contains(r.body, []byte("iriskvfs_backend_up 0")) {
		t.Errorf("/metrics of a closed store: %d, want iriskvfs_backend_up 0", r.status)
	}
}

// TestServerThroughSocket: the server over a client of an admin socket (as
// `serve` runs while a mount daemon holds the store) answers the same, and
// a daemon that went away is 503.
func TestServerThroughSocket(t *testing.T) {
	var admin *api.AdminServer
	e := newEnv(t, envOpts{token: testToken, backend: func(l api.Local) api.Backend {
		var err error
		// The socket path must be short: use a directory of its own.
		dir, err := os.MkdirTemp("", "iriskvfs-sock")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		if admin, err = api.ServeAdmin(dir, l, nil); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { admin.Close() })
		return api.NewSocketClient(api.SocketPath(dir))
	}})
	r := e.do("POST", kv+"value"+q("scope", "task", "key", "k.txt", "ttl_hours", "1.5", "content_type", "text/plain"), strings.NewReader("via socket"), "")
	if r.status != 201 {
		t.Fatalf("POST value: %d %s", r.status, r.body)
	}
	var put api.Entry
	r.json(t, &put)
	if put.TTLHours != 1.5 {
		t.Errorf("ttl_hours 1.5 through the socket gave %v", put.TTLHours)
	}
	r = e.do("GET", kv+"value"+q("scope", "task", "key", "k.txt"), nil, "")
	if r.status != 200 || string(r.body) != "via socket" || r.header.Get("ETag") != `"`+put.Fingerprint+`"` || r.header.Get("Content-Type") != "text/plain" {
		t.Errorf("GET value: %d %q %v", r.status, r.body, r.header)
	}
	for _, c := range []struct {
		method, target string
		status         int
		code           string
	}{
		{"GET", kv + "value" + q("scope", "task", "key", "../../etc/passwd"), 400, "bad_key"},
		{"GET", kv + "keys" + q("scope", ".."), 400, "bad_scope"},
		{"GET", kv + "value" + q("scope", "task", "key", "nosuch"), 404, "not_found"},
	} {
		r := e.do(c.method, c.target, nil, "")
		if r.status != c.status || r.errorCode(t) != c.code {
			t.Errorf("%s %s: %d %s", c.method, c.target, r.status, r.body)
		}
	}
	if r := e.do("GET", kv+"stats", nil, ""); r.status != 200 {
		t.Errorf("stats: %d %s", r.status, r.body)
	}
	// The daemon goes away.
	admin.Close()
	if r := e.do("GET", "/healthz", nil, "-"); r.status != 503 {
		t.Errorf("/healthz with the daemon gone: %d %s", r.status, r.body)
	}
	if r := e.do("GET", kv+"stats", nil, ""); r.status != 503 || r.errorCode(t) != "unavailable" {
		t.Errorf("stats with the daemon gone: %d %s", r.status, r.body)
	}
}

// TestServeShutdown: Serve stops when its context ends, letting a request
// in flight finish.
func TestServeShutdown(t *testing.T) {
	root := t.TempDir()
	s, err := store.Open(filepath.Join(root, "store"), store.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := api.NewServer(api.ServerConfig{Backend: api.Local{Store: s}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln, 5*time.Second) }()
	base := "http://" + ln.Addr().String()

	// A slow upload in flight when the shutdown starts still completes.
	pr, pw := io.Pipe()
	result := make(chan int, 1)
	go func() {
		res, err := http.Post(base+kv+"value?scope=task&key=slow", "application/octet-stream", pr)
		if err != nil {
			result <- -1
			return
		}
		res.Body.Close()
		result <- res.StatusCode
	}()
	pw.Write([]byte("part one, "))
	time.Sleep(100 * time.Millisecond)
	cancel()
	time.Sleep(100 * time.Millisecond)
	pw.Write([]byte("part two"))
	pw.Close()
	if code := <-result; code != 201 {
		t.Errorf("the request in flight at shutdown got %d", code)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Serve: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after its context ended")
	}
	if _, err := http.Get(base + "/healthz"); err == nil {
		t.Error("the server still answers after shutdown")
	}
	if v, err := s.Open("task", "slow"); err != nil {
		t.Errorf("the value written during shutdown: %v", err)
	} else {
		v.Close()
	}
}

func TestLoadToken(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string, mode os.FileMode) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
		return p
	}
	if tok, err := api.LoadToken(write("good", "  tok-123\n", 0o600), "from-env"); err != nil || tok != "tok-123" {
		t.Errorf("good file: %q, %v (the file wins over the environment)", tok, err)
	}
	if tok, err := api.LoadToken(write("ro", "tok", 0o400), ""); err != nil || tok != "tok" {
		t.Errorf("0400 file: %q, %v", tok, err)
	}
	for name, c := range map[string]struct {
		content string
		mode    os.FileMode
		want    string
	}{
		"group-readable": {"tok", 0o640, "group or others"},
		"world-readable": {"tok", 0o604, "group or others"},
		"empty":          {" \n\t\n", 0o600, "empty token"},
		"with a space":   {"to k", 0o600, "printable ASCII"},
	} {
		if _, err := api.LoadToken(write(name, c.content, c.mode), ""); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s token file: %v, want an error with %q", name, err, c.want)
		}
	}
	if _, err := api.LoadToken(filepath.Join(dir, "missing"), ""); err == nil {
		t.Error("missing token file accepted")
	}
	if _, err := api.LoadToken(dir, ""); err == nil {
		t.Error("a directory accepted as token file")
	}
	if tok, err := api.LoadToken("", " env-tok \n"); err != nil || tok != "env-tok" {
		t.Errorf("env token: %q, %v", tok, err)
	}
	if _, err := api.LoadToken("", "  "); err == nil {
		t.Error("blank env token accepted")
	}
	if tok, err := api.LoadToken("", ""); err != nil || tok != "" {
		t.Errorf("no token: %q, %v", tok, err)
	}
}

// spy records the addresses a backend was asked about.
type spy struct {
	api.Backend
	mu    sync.Mutex
	calls []string
}

func (s *spy) note(op, scope, key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, op+" "+scope+"/"+key)
}

func (s *spy) Put(ctx context.Context, scope, key string, body io.Reader, o api.PutOptions) (api.Entry, error) {
	s.note("put", scope, key)
	return s.Backend.Put(ctx, scope, key, body, o)
}

func (s *spy) Get(ctx context.Context, scope, key string) (api.Entry, io.ReadCloser, error) {
	s.note("get", scope, key)
	return s.Backend.Get(ctx, scope, key)
}

func (s *spy) List(ctx context.Context, scope string) ([]api.Entry, error) {
	s.note("list", scope, "")
	return s.Backend.List(ctx, scope)
}

func (s *spy) Delete(ctx context.Context, scope, key string) error {
	s.note("delete", scope, key)
	return s.Backend.Delete(ctx, scope, key)
}

func (s *spy) Clear(ctx context.Context, scope string) (int, error) {
	s.note("clear", scope, "")
	return s.Backend.Clear(ctx, scope)
}

// TestServerGuardsBackend: a malformed scope or key never reaches the
// backend, whatever the backend would make of it (a remote one may build
// paths from them).
func TestServerGuardsBackend(t *testing.T) {
	sp := &spy{}
	e := newEnv(t, envOpts{token: testToken, backend: func(l api.Local) api.Backend { sp.Backend = l; return sp }})
	for _, c := range []struct{ method, target string }{
		{"GET", kv + "value" + q("scope", "task", "key", "../../etc/passwd")},
		{"POST", kv + "value" + q("scope", "task", "key", "a/b")},
		{"DELETE", kv + "value" + q("scope", "task", "key", "nul\x00")},
		{"GET", kv + "value" + q("scope", "..", "key", "x")},
		{"POST", kv + "value" + q("scope", "task/..", "key", "x")},
		{"GET", kv + "keys" + q("scope", "../..")},
		{"DELETE", kv + "clear-scope" + q("scope", "/")},
		{"DELETE", kv + "clear-scope"},
		{"GET", kv + "value" + q("scope", "Task", "key", "x")},
	} {
		r := e.do(c.method, c.target, strings.NewReader("x"), "")
		if r.status != 400 {
			t.Errorf("%s %q: %d %s", c.method, c.target, r.status, r.body)
		}
	}
	if len(sp.calls) != 0 {
		t.Errorf("the backend was called with %q", sp.calls)
	}
	// Well-formed names do reach it (an unknown scope is its to refuse).
	if r := e.do("GET", kv+"keys"+q("scope", "nosuch"), nil, ""); r.status != 400 || r.errorCode(t) != "bad_scope" {
		t.Errorf("unknown scope: %d %s", r.status, r.body)
	}
	if len(sp.calls) != 1 {
		t.Errorf("calls %q, want the one list", sp.calls)
	}
}
