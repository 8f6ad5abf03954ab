package daytona_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"

	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/integration/daytona"
	"github.com/iriskvfs/iriskvfs/integration/daytona/daytonatest"
)

// TestAPIOverDaytona drives the REST API's Daytona backend end to end:
// real HTTP, the real generated clients, the fake Daytona, and a real FUSE
// mount behind its toolbox.
func TestAPIOverDaytona(t *testing.T) {
	requireFUSE(t)
	f := daytonatest.New(t)
	_, l := newSandbox(t, f, "sb-api", "started")
	unmountAtEnd(t, l)
	c := newClient(t, f.APIURL())
	if _, err := c.Init(context.Background(), "sb-api", daytona.InitOptions{Layout: l, Binary: binary, Version: testVersion, GOARCH: runtime.GOARCH}); err != nil {
		t.Fatal(err)
	}
	const token = "s3cret-token"
	srv := httptest.NewServer(api.NewServer(api.ServerConfig{Resolve: daytona.Resolver(c, l), Token: token}))
	defer srv.Close()
	do := func(method, path, body string) (int, string) {
		t.Helper()
		req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	base := "/api/sandboxes/sb-api/kv-cache/"

	if code, body := do("POST", base+"value?scope=task&key=plan.md", "# plan\n"); code != 201 {
		t.Fatalf("POST value: %d %s", code, body)
	}
	if code, body := do("GET", base+"value?scope=task&key=plan.md", ""); code != 200 || body != "# plan\n" {
		t.Fatalf("GET value: %d %q", code, body)
	}
	code, body := do("GET", base+"keys?scope=task", "")
	var keys struct {
		Keys []api.Entry `json:"keys"`
	}
	if code != 200 || json.Unmarshal([]byte(body), &keys) != nil || len(keys.Keys) != 1 || keys.Keys[0].Key != "plan.md" {
		t.Fatalf("GET keys: %d %s", code, body)
	}
	if code, body := do("GET", base+"stats", ""); code != 200 || !strings.Contains(body, `"instructions"`) {
		t.Fatalf("GET stats: %d %s", code, body)
	}
	if code, body := do("DELETE", base+"value?scope=task&key=plan.md", ""); code != 200 {
		t.Fatalf("DELETE value: %d %s", code, body)
	}
	if code, _ := do("GET", base+"value?scope=task&key=plan.md", ""); code != 404 {
		t.Fatalf("GET deleted value: %d, want 404", code)
	}
	if code, body := do("GET", "/api/sandboxes/no-such-sandbox/kv-cache/stats", ""); code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("unknown sandbox: %d %s, want a 404 JSON error", code, body)
	}

	// The control plane gone: 502 with the reason.
	dead := httptest.NewServer(http.NotFoundHandler())
	deadURL := dead.URL
	dead.Close()
	c2 := newClient(t, deadURL+"/api")
	srv2 := httptest.NewServer(api.NewServer(api.ServerConfig{Resolve: daytona.Resolver(c2, l), Token: token}))
	defer srv2.Close()
	req, _ := http.NewRequest("GET", srv2.URL+"/api/sandboxes/sb-api/kv-cache/stats", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 502 || !strings.Contains(string(b), `"error"`) {
		t.Fatalf("unreachable Daytona: %d %s, want a 502 JSON error", resp.StatusCode, b)
	}
}
