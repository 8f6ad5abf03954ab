package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/iriskvfs/iriskvfs/store"
)

func TestServeRefusals(t *testing.T) {
	t.Setenv("IRISKVFS_API_TOKEN", "")
	dir := t.TempDir()
	st := filepath.Join(dir, "store")
	for _, addr := range []string{"0.0.0.0:0", ":0", "192.0.2.1:8088", "[::]:0"} {
		r := runCLI(t, nil, "--store", st, "serve", "--addr", addr)
		wantErrLine(t, r, `^iriskvfs: serve: refusing to listen on .* without a token: set --token-file or \$IRISKVFS_API_TOKEN`, "serve --addr "+addr+" without a token")
	}
	loose := filepath.Join(dir, "loose")
	os.WriteFile(loose, []byte("tok"), 0o644)
	os.Chmod(loose, 0o644)
	wantErrLine(t, runCLI(t, nil, "--store", st, "serve", "--addr", "0.0.0.0:0", "--token-file", loose),
		`token file .*: mode 0644 lets group or others read it`, "serve with a world-readable token file")
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, []byte("\n"), 0o600)
	wantErrLine(t, runCLI(t, nil, "--store", st, "serve", "--token-file", empty), `token file .*: empty token`, "serve with an empty token file")
	wantErrLine(t, runCLI(t, nil, "--store", st, "serve", "--token-file", filepath.Join(dir, "missing")), `token file: .*no such file`, "serve with a missing token file")
	if r := runCLI(t, nil, "--store", st, "serve", "--addr", "nope"); r.code != 2 {
		t.Errorf("serve --addr nope: %s, want exit 2", r)
	}
	if r := runCLI(t, nil, "--store", st, "serve", "--max-body", "0"); r.code != 2 {
		t.Errorf("serve --max-body 0: %s, want exit 2", r)
	}
	if _, err := os.Stat(st); err == nil {
		t.Error("a refused serve created the store")
	}
}

// server is a running `iriskvfs serve`.
type server struct {
	cmd  *exec.Cmd
	base string
	mu   sync.Mutex
	log  bytes.Buffer
	done chan struct{}
}

func (s *server) logs() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

// startServe runs `iriskvfs serve` on a free loopback port and waits for
// its "serving" line; it is stopped when the test ends.
func startServe(t *testing.T, env []string, args ...string) *server {
	t.Helper()
	cmd := exec.Command(cliPath(t), append(args, "--addr", "127.0.0.1:0")...)
	cmd.Env = append(os.Environ(), env...)
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &server{cmd: cmd, done: make(chan struct{})}
	addr := make(chan string, 1)
	go func() {
		defer close(s.done)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.mu.Lock()
			s.log.WriteString(sc.Text() + "\n")
			s.mu.Unlock()
			var l map[string]any
			if json.Unmarshal(sc.Bytes(), &l) == nil && l["msg"] == "serving" {
				addr <- l["addr"].(string)
			}
		}
		cmd.Wait()
	}()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.done:
		case <-time.After(15 * time.Second):
			cmd.Process.Kill()
			<-s.done
		}
	})
	select {
	case a := <-addr:
		s.base = "http://" + a
	case <-s.done:
		t.Fatalf("serve exited: %s", s.logs())
	case <-time.After(30 * time.Second):
		t.Fatalf("serve did not start: %s", s.logs())
	}
	return s
}

// stop sends SIGTERM and requires a clean exit.
func (s *server) stop(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(15 * time.Second):
		t.Fatalf("serve did not stop on SIGTERM: %s", s.logs())
	}
	if code := s.cmd.ProcessState.ExitCode(); code != 0 {
		t.Errorf("serve exited %d after SIGTERM: %s", code, s.logs())
	}
}

func httpDo(t *testing.T, method, url, token string, body io.Reader) (int, string, http.Header) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, string(b), res.Header
}

const kvRoutes = "/api/sandboxes/local/kv-cache/"

func TestServeEndToEnd(t *testing.T) {
	dir := t.TempDir()
	st := filepath.Join(dir, "store")
	tokFile := filepath.Join(dir, "token")
	const token = "e2e-Token-0123456789"
	if err := os.WriteFile(tokFile, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// Listening on 127.0.0.1:0 with a token, which the file gives (over
	// the environment's).
	s := startServe(t, []string{"IRISKVFS_API_TOKEN=not-this-one"}, "--store", st, "serve", "--token-file", tokFile)
	if code, _, _ := httpDo(t, "GET", s.base+"/healthz", "", nil); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	if code, _, h := httpDo(t, "GET", s.base+kvRoutes+"stats", "", nil); code != 401 || h.Get("WWW-Authenticate") == "" {
		t.Errorf("stats without a token: %d", code)
	}
	if code, _, _ := httpDo(t, "GET", s.base+kvRoutes+"stats", "not-this-one", nil); code != 401 {
		t.Errorf("stats with the environment's token: %d", code)
	}
	code, body, _ := httpDo(t, "POST", s.base+kvRoutes+"value?scope=task&key=notes.txt&content_type=text/plain", token, strings.NewReader("served value"))
	if code != 201 {
		t.Fatalf("POST value: %d %s", code, body)
	}
	code, body, h := httpDo(t, "GET", s.base+kvRoutes+"value?scope=task&key=notes.txt", token, nil)
	if code != 200 || body != "served value" || h.Get("Content-Type") != "text/plain" || h.Get("ETag") == "" {
		t.Errorf("GET value: %d %q %v", code, body, h)
	}
	// The other commands work meanwhile, through the admin socket serve
	// holds for the store it opened.
	if out := mustCLI(t, nil, "--store", st, "get", "task", "notes.txt"); out != "served value" {
		t.Errorf("get while serve runs: %q", out)
	}
	mustCLI(t, strings.NewReader("from the cli"), "--store", st, "put", "task", "cli.txt")
	code, body, _ = httpDo(t, "GET", s.base+kvRoutes+"value?scope=task&key=cli.txt", token, nil)
	if code != 200 || body != "from the cli" {
		t.Errorf("GET of the CLI's put: %d %q", code, body)
	}
	code, body, _ = httpDo(t, "GET", s.base+"/metrics", token, nil)
	if code != 200 || !strings.Contains(body, `iriskvfs_scope_keys{scope="task"} 2`) {
		t.Errorf("/metrics: %d, lacks the task scope's 2 keys", code)
	}
	s.stop(t)
	logs := s.logs()
	if strings.Contains(logs, token) || strings.Contains(logs, "served value") {
		t.Errorf("the log holds the token or a value:\n%s", logs)
	}
	for _, l := range strings.Split(strings.TrimSpace(logs), "\n") {
		if !json.Valid([]byte(l)) {
			t.Errorf("log line is not JSON: %q", l)
		}
	}
	if !strings.Contains(logs, `"msg":"stopped"`) {
		t.Errorf("no \"stopped\" line:\n%s", logs)
	}
	if _, held := store.LockHolder(st); held {
		t.Error("the store is still locked after serve stopped")
	}
	if _, err := os.Stat(filepath.Join(st, "admin.sock")); err == nil {
		t.Error("serve left its admin socket")
	}
}

func TestServeNoTokenWarns(t *testing.T) {
	st := filepath.Join(t.TempDir(), "store")
	s := startServe(t, []string{"IRISKVFS_API_TOKEN="}, "--store", st, "serve")
	if code, body, _ := httpDo(t, "GET", s.base+kvRoutes+"stats", "", nil); code != 200 {
		t.Errorf("stats without auth on loopback: %d %s", code, body)
	}
	s.stop(t)
	if !strings.Contains(s.logs(), "serving without authentication") {
		t.Errorf("no warning about the missing token:\n%s", s.logs())
	}
}

// TestServeThroughMount: with a mount daemon holding the store, serve goes
// through its admin socket, and what one side writes the other sees.
func TestServeThroughMount(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	st, point := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	mountDaemon(t, st, point)
	s := startServe(t, []string{"IRISKVFS_API_TOKEN=mount-token"}, "--store", st, "serve")
	if !strings.Contains(s.logs(), `"backend":"admin socket"`) {
		t.Errorf("serve did not go through the daemon:\n%s", s.logs())
	}
	code, body, _ := httpDo(t, "POST", s.base+kvRoutes+"value?scope=task&key=api.txt", "mount-token", strings.NewReader("from the api"))
	if code != 201 {
		t.Fatalf("POST value: %d %s", code, body)
	}
	if b, err := os.ReadFile(filepath.Join(point, "task", "api.txt")); err != nil || string(b) != "from the api" {
		t.Errorf("the mount shows %q, %v", b, err)
	}
	if err := os.WriteFile(filepath.Join(point, "task", "fs.txt"), []byte("from the mount"), 0o644); err != nil {
		t.Fatal(err)
	}
	code, body, _ = httpDo(t, "GET", s.base+kvRoutes+"value?scope=task&key=fs.txt", "mount-token", nil)
	if code != 200 || body != "from the mount" {
		t.Errorf("GET of a file written through the mount: %d %q", code, body)
	}
	code, body, _ = httpDo(t, "GET", s.base+kvRoutes+"value?scope=task&key=..%2F..%2Fetc%2Fpasswd", "mount-token", nil)
	if code != 400 || !strings.Contains(body, `"bad_key"`) {
		t.Errorf("traversal through the daemon: %d %s", code, body)
	}
	if code, _, _ := httpDo(t, "GET", s.base+"/healthz", "", nil); code != 200 {
		t.Errorf("/healthz: %d", code)
	}
	s.stop(t)
	if strings.Contains(s.logs(), "mount-token") {
		t.Errorf("the log holds the token:\n%s", s.logs())
	}
}
