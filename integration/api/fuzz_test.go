package api_test

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"path/filepath"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// FuzzHandler throws random methods, paths, queries, tokens and bodies at
// the server over a real store: it must never panic, and every answer is a
// success or a JSON error of the documented shape.
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

	root := f.TempDir()
	p, err := quota.Parse([]byte("scopes:\n  task: {quota: 4KiB}\n"))
	if err != nil {
		f.Fatal(err)
	}
	s, err := store.Open(filepath.Join(root, "store"), store.Options{Policy: p})
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { s.Close() })
	srv := api.NewServer(api.ServerConfig{
		Backend: api.Local{Store: s}, Token: testToken, MaxBody: 8 << 10,
		Log: slog.New(slog.DiscardHandler),
	})

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
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, req) // a panic fails the fuzz
		res := rec.Result()
		b := rec.Body.Bytes()
		switch {
		case res.StatusCode >= 200 && res.StatusCode < 300:
		default:
			if _, err := checkErrorShape(res.StatusCode, res.Header, b); err != nil {
				t.Fatalf("%s %q ?%q: status %d: %v", method, path, rawQuery, res.StatusCode, err)
			}
			if res.StatusCode == 401 && !strings.HasPrefix(res.Header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("401 without WWW-Authenticate: Bearer")
			}
			if res.StatusCode >= 500 && res.StatusCode != 507 && !bytes.Contains(b, []byte(`"unavailable"`)) {
				t.Fatalf("%s %q ?%q: server error %d: %s", method, path, rawQuery, res.StatusCode, b)
			}
		}
		if !auth && path != "/healthz" && res.StatusCode != 401 {
			t.Fatalf("%s %q without a token: %d", method, path, res.StatusCode)
		}
	})
}
