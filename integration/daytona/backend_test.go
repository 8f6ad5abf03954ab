package daytona_test

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os/exec"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/integration/daytona"
	"github.com/iriskvfs/iriskvfs/integration/daytona/daytonatest"
)

func wantStatus(t *testing.T, err error, status int, what string) {
	t.Helper()
	var ae *api.Error
	if !errors.As(err, &ae) || ae.Status != status {
		t.Errorf("%s: err = %#v (%v), want an *api.Error with status %d", what, err, err, status)
	}
}

// TestBackend drives every Backend method against a sandbox of the fake
// whose cache `sandbox init` really mounted.
func TestBackend(t *testing.T) {
	requireFUSE(t)
	f := daytonatest.New(t)
	_, l := newSandbox(t, f, "sb1", "stopped")
	unmountAtEnd(t, l)
	c := newClient(t, f.APIURL())
	ctx := context.Background()
	if _, err := c.Init(ctx, "sb1", daytona.InitOptions{Layout: l, Binary: binary, Version: testVersion, GOARCH: runtime.GOARCH}); err != nil {
		t.Fatal(err)
	}
	b := &daytona.Backend{Client: c, SandboxID: "sb1", Layout: l, CheckEvery: time.Nanosecond}

	// A plain value goes through the file API into the mount.
	e, err := b.Put(ctx, "task", "plan.md", strings.NewReader("# plan\n"), api.PutOptions{})
	if err != nil || e.Key != "plan.md" || e.SizeBytes != 7 || e.Fingerprint == "" {
		t.Fatalf("put: %+v %v", e, err)
	}
	// Options, an awkward content type (quotes, spaces) and metadata go
	// through the CLI, with the values in the environment.
	ct := `text/plain; charset="utf-8" '$(touch /tmp/pwned)'`
	e, err = b.Put(ctx, "project", "notes", strings.NewReader("hello"), api.PutOptions{
		TTL: 2 * time.Hour, ContentType: ct, Meta: map[string]string{"author": "it's me", "b": "2"},
	})
	if err != nil || e.ContentType != ct || e.TTLHours != 2 || e.Metadata["author"] != "it's me" || e.Metadata["b"] != "2" {
		t.Fatalf("put with options: %+v %v", e, err)
	}
	// An empty value (the toolbox cannot upload one).
	if e, err = b.Put(ctx, "task", "empty", strings.NewReader(""), api.PutOptions{}); err != nil || e.SizeBytes != 0 {
		t.Fatalf("put empty: %+v %v", e, err)
	}

	e, rc, err := b.Get(ctx, "task", "plan.md")
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(rc)
	rc.Close()
	if string(data) != "# plan\n" || e.Key != "plan.md" {
		t.Errorf("get: %q %+v", data, e)
	}
	_, _, err = b.Get(ctx, "task", "missing")
	wantStatus(t, err, 404, "get missing")

	es, err := b.List(ctx, "task")
	if err != nil || len(es) != 2 {
		t.Errorf("list task: %+v %v", es, err)
	}
	all, err := b.List(ctx, "")
	if err != nil || len(all) < 3 {
		t.Errorf("list all: %d %v", len(all), err)
	}

	if err := b.Delete(ctx, "task", "plan.md"); err != nil {
		t.Error(err)
	}
	wantStatus(t, b.Delete(ctx, "task", "plan.md"), 404, "delete missing")

	st, err := b.Stats(ctx)
	if err != nil || len(st.Scopes) == 0 {
		t.Errorf("stats: %+v %v", st, err)
	}
	if _, err := b.Prune(ctx); err != nil {
		t.Errorf("prune: %v", err)
	}
	if n, err := b.Clear(ctx, "task"); err != nil || n != 1 {
		t.Errorf("clear: %d %v", n, err)
	}
	if acts, err := b.Seed(ctx, true); err != nil || len(acts) == 0 || acts[0].Did == "" {
		t.Errorf("seed: %+v %v", acts, err)
	}
	if rep, err := b.Fsck(ctx, false); err != nil || !rep.Clean() || rep.Entries == 0 {
		t.Errorf("fsck: %+v %v", rep, err)
	}

	// Hostile or bad names never reach the sandbox.
	_, err = b.Put(ctx, "../etc", "x", strings.NewReader("x"), api.PutOptions{})
	wantStatus(t, err, 400, "bad scope")
	_, _, err = b.Get(ctx, "task", "../../../etc/passwd")
	wantStatus(t, err, 400, "traversal key")
	_, err = b.Clear(ctx, "task; rm -rf /")
	wantStatus(t, err, 400, "bad clear scope")
	_, err = b.Put(ctx, "nosuchscope", "k", strings.NewReader("x"), api.PutOptions{})
	wantStatus(t, err, 400, "unknown scope")

	// The sandbox stopped: the mount is gone; the next call starts the
	// sandbox and mounts the cache again.
	if out, err := exec.Command(l.Bin(), "--store", l.Store(), "unmount", l.Mount()).CombinedOutput(); err != nil {
		t.Fatalf("unmount: %v %s", err, out)
	}
	f.SetState("sb1", "stopped")
	if _, err := b.Put(ctx, "task", "again", strings.NewReader("x"), api.PutOptions{}); err != nil {
		t.Fatalf("put after a stop: %v", err)
	}
	if !mounted(l.Mount()) || f.State("sb1") != "started" {
		t.Error("not started and mounted again")
	}
}

func TestBackendErrors(t *testing.T) {
	f := daytonatest.New(t)
	ctx := context.Background()
	b := daytona.NewBackend(newClient(t, f.APIURL()), "nope")
	_, err := b.Stats(ctx)
	wantStatus(t, err, http.StatusNotFound, "unknown sandbox")

	b = daytona.NewBackend(newClient(t, "http://127.0.0.1:1/api"), "sb1")
	_, err = b.List(ctx, "task")
	wantStatus(t, err, http.StatusBadGateway, "unreachable")
	if err == nil || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("unreachable: %v, want the reason", err)
	}

	// A sandbox without iriskvfs: the mount cannot be made.
	newSandbox(t, f, "bare", "started")
	b = daytona.NewBackend(newClient(t, f.APIURL()), "bare")
	b.Layout = daytona.Layout{Dir: t.TempDir() + "/iris"}
	_, err = b.Stats(ctx)
	if err == nil || !strings.Contains(err.Error(), "sandbox init") {
		t.Errorf("bare sandbox: %v", err)
	}
}
