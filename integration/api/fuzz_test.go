package api_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// fuzzServer is the server the fuzz targets throw requests at: a real store
// (task quota 4 KiB, bodies up to 8 KiB, so 507 and 413 are reachable) on a
// frozen clock, so that nothing expires between two looks at it.
type fuzzServer struct {
	store *store.Store
	srv   *api.Server
	logs  *syncBuffer
}

func newFuzzServer(f *testing.F) *fuzzServer {
	root := f.TempDir()
	p, err := quota.Parse([]byte("scopes:\n  task: {quota: 4KiB}\n"))
	if err != nil {
		f.Fatal(err)
	}
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	s, err := store.Open(filepath.Join(root, "store"), store.Options{Policy: p, Now: func() time.Time { return now }})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	if _, err := s.Fsck(false); err != nil { // waits for the startup sweep
		f.Fatal(err)
	}
	logs := &syncBuffer{}
	srv := api.NewServer(api.ServerConfig{
		Backend: api.Local{Store: s}, Token: testToken, MaxBody: 8 << 10,
		Log: slog.New(slog.NewTextHandler(logs, nil)),
	})
	return &fuzzServer{store: s, srv: srv, logs: logs}
}

// state is everything a request could change: every entry with all its
// metadata, and the files of the store (values, and staged writes).
func (fz *fuzzServer) state(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, sc := range fz.store.Policy().Names() {
		es, err := fz.store.List(sc)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range es {
			lines = append(lines, fmt.Sprintf("%+v", e))
		}
	}
	for _, d := range []string{"blobs/*/*", "tmp/*", "quarantine/*"} {
		m, _ := filepath.Glob(filepath.Join(fz.store.Dir(), d))
		lines = append(lines, m...)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

// serve answers req and checks the contract: no panic; a success, or a
// JSON error {"error":{"code","message"}} with a 4xx status (or 507, or
// 503 "unavailable"); 401 with WWW-Authenticate: Bearer; and a request
// that got an error changed nothing.
func (fz *fuzzServer) serve(t *testing.T, req *http.Request, what string) *http.Response {
	t.Helper()
	before := fz.state(t)
	rec := httptest.NewRecorder()
	fz.srv.ServeHTTP(rec, req)
	res := rec.Result()
	b := rec.Body.Bytes()
	if strings.Contains(fz.logs.String(), "handler panic") {
		t.Fatalf("%s: the handler panicked: %s", what, fz.logs.String())
	}
	if res.StatusCode < 400 {
		return res
	}
	if _, err := checkErrorShape(res.StatusCode, res.Header, b); err != nil {
		t.Fatalf("%s: status %d: %v", what, res.StatusCode, err)
	}
	if res.StatusCode == 401 && !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
		t.Fatalf("%s: 401 without WWW-Authenticate: Bearer", what)
	}
	if res.StatusCode >= 500 && res.StatusCode != 507 && !bytes.Contains(b, []byte(`"unavailable"`)) {
		t.Fatalf("%s: server error %d: %s", what, res.StatusCode, b)
	}
	if after := fz.state(t); after != before {
		t.Fatalf("%s: failed with %d %s and changed the store:\nbefore:\n%s\nafter:\n%s", what, res.StatusCode, b, before, after)
	}
	return res
}

// FuzzHandler throws random methods, paths, queries, tokens and bodies at
// the server over a real store (see fuzzServer.serve for what must hold).
func FuzzHandler(f *testing.F) {
	f.Add("GET", kv+"stats", "", "", true)
	f.Add("POST", kv+"value", "scope=task&key=a.txt&ttl_hours=1&content_type=text/plain", "hello", true)
	f.Add("GET", kv+"value", "scope=task&key=a.txt", "", true)
	f.Add("DELETE", kv+"value", "scope=task&key=a.txt", "", true)
	f.Add("GET", kv+"keys", "scope=..", "", true)
	f.Add("POST", kv+"value", "scope=task&key=../../etc/passwd", "x", true)
	f.Add("POST", kv+"value", "scope=task&key=k&ttl=abc&meta=x", "x", true)
	f.Add("POST", kv+"prune", "", "", true)
	f.Add("POST", kv+"seed-instructions", "force_refresh=true", "", true)
	f.Add("POST", kv+"fsck", "repair=true", "", true)
	f.Add("DELETE", kv+"clear-scope", "scope=task", "", true)
	f.Add("GET", "/healthz", "", "", false)
	f.Add("GET", "/metrics", "", "", true)
	f.Add("BREW", "/api/sandboxes/local/kv-cache/../../x", "%zz", "", false)
	f.Add("GET", "//api//sandboxes/./local/kv-cache/stats", "", "", true)
	fz := newFuzzServer(f)

	f.Fuzz(func(t *testing.T, method, path, rawQuery, body string, auth bool) {
		if len(body) > 64<<10 {
			body = body[:64<<10]
		}
		if method == "" {
			method = "GET"
		}
		u := &url.URL{Path: path, RawQuery: rawQuery}
		req := &http.Request{
			Method: method, URL: u, RequestURI: u.RequestURI(),
			Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
			Header: http.Header{}, Host: "example.test", RemoteAddr: "127.0.0.1:1234",
			Body: io.NopCloser(strings.NewReader(body)), ContentLength: int64(len(body)),
		}
		req = req.WithContext(t.Context())
		if auth {
			req.Header.Set("Authorization", "Bearer "+testToken)
		}
		res := fz.serve(t, req, fmt.Sprintf("%s %q ?%q", method, path, rawQuery))
		if !auth && path != "/healthz" && res.StatusCode != 401 {
			t.Fatalf("%s %q without a token: %d", method, path, res.StatusCode)
		}
	})
}

// FuzzRawRequest throws whole HTTP/1.1 requests at the server, as they come
// off the wire: any method, a request target with %-escapes, NUL, "..",
// bytes that are not UTF-8 and any query (scope, key, ttl, ttl_hours,
// content_type, meta), any headers (tokens, Content-Type, chunked bodies)
// and any body. What the HTTP parser itself rejects never reaches the
// handler and is skipped; everything else must keep the contract (see
// fuzzServer.serve). The seed corpus is testdata/fuzz/FuzzRawRequest.
func FuzzRawRequest(f *testing.F) {
	auth := "Authorization: Bearer " + testToken + "\r\n"
	for _, r := range []string{
		"GET " + kv + "stats HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"POST " + kv + "value?scope=task&key=a.txt&ttl=6h&content_type=text/plain&meta=a%3D1 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5\r\n\r\nhello",
		"GET " + kv + "value?scope=task&key=%2e%2e%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"POST " + kv + "value?scope=task&key=a%00b HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 1\r\n\r\nx",
		"POST " + kv + "value?scope=%ff%fe&key=%c3%28 HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 1\r\n\r\nx",
		"POST " + kv + "value?scope=task&key=k&ttl_hours=1e309 HTTP/1.1\r\nHost: x\r\n" + auth + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
		"POST " + kv + "value?scope=task&key=big HTTP/1.1\r\nHost: x\r\n" + auth + "Content-Length: 5000\r\n\r\n" + strings.Repeat("b", 5000),
		"DELETE " + kv + "clear-scope?scope=nosuch HTTP/1.1\r\nHost: x\r\n" + auth + "\r\n",
		"GET /api/sandboxes/lo%2Fcal/kv-cache/keys?scope=task&scope=project HTTP/1.1\r\nHost: x\r\nAuthorization: bearer " + testToken + "\r\n\r\n",
		"GET /metrics HTTP/1.1\r\nHost: x\r\n" + auth + auth + "\r\n",
	} {
		f.Add([]byte(r))
	}
	fz := newFuzzServer(f)

	f.Fuzz(func(t *testing.T, raw []byte) {
		req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			return // the server's parser answers 400 itself
		}
		// A body cut short of its framing is a dropped connection, not a
		// request: the handler sees only complete ones here.
		body, err := io.ReadAll(io.LimitReader(req.Body, 64<<10))
		if err != nil {
			return
		}
		req.Body, req.ContentLength = io.NopCloser(bytes.NewReader(body)), int64(len(body))
		req.TransferEncoding = nil
		req.RemoteAddr = "127.0.0.1:1234"
		fz.serve(t, req.WithContext(t.Context()), fmt.Sprintf("%q", raw))
	})
}
