// Package daytonatest is a fake Daytona for tests: the control-plane and
// toolbox endpoints iriskvfs uses, on an httptest server (loopback), with a
// sandbox's filesystem confined to a local directory and its commands run
// by the local sh. Paths are identity paths that must lie inside the
// sandbox's Root, so commands run unchanged on the host.
package daytonatest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Token is the bearer token the fake accepts.
const Token = "test-token"

// Fake is a fake Daytona server.
type Fake struct {
	URL string // the server; DAYTONA_API_URL is URL + "/api"
	srv *httptest.Server

	mu        sync.Mutex
	orgID     string
	sandboxes map[string]*Sandbox
	requests  []string
}

// Sandbox is a fake sandbox.
type Sandbox struct {
	ID    string
	State string // "started", "stopped", "starting", "error", …
	// StartPolls is how many GETs a starting sandbox stays "starting".
	StartPolls int
	// Root confines the sandbox's filesystem.
	Root string
	// Env is added to the environment of its commands.
	Env []string
}

// New starts a fake; it is closed at the end of the test.
func New(t interface {
	Cleanup(func())
	Helper()
}) *Fake {
	t.Helper()
	f := &Fake{sandboxes: map[string]*Sandbox{}}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/sandbox/{id}", f.getSandbox)
	mux.HandleFunc("POST /api/sandbox/{id}/start", f.startSandbox)
	mux.HandleFunc("GET /toolbox/{id}/files", f.tb(f.listFiles))
	mux.HandleFunc("GET /toolbox/{id}/files/info", f.tb(f.fileInfo))
	mux.HandleFunc("GET /toolbox/{id}/files/download", f.tb(f.download))
	mux.HandleFunc("POST /toolbox/{id}/files/upload", f.tb(f.upload))
	mux.HandleFunc("DELETE /toolbox/{id}/files", f.tb(f.deleteFile))
	mux.HandleFunc("POST /toolbox/{id}/files/folder", f.tb(f.mkdir))
	mux.HandleFunc("POST /toolbox/{id}/files/permissions", f.tb(f.chmod))
	mux.HandleFunc("POST /toolbox/{id}/process/execute", f.tb(f.execute))
	f.srv = httptest.NewServer(f.auth(mux))
	f.URL = f.srv.URL
	t.Cleanup(f.srv.Close)
	return f
}

// APIURL is the value for DAYTONA_API_URL.
func (f *Fake) APIURL() string { return f.URL + "/api" }

// Add registers a sandbox.
func (f *Fake) Add(sb *Sandbox) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes[sb.ID] = sb
}

// RequireOrg makes X-Daytona-Organization-ID: id required (JWT mode).
func (f *Fake) RequireOrg(id string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.orgID = id
}

// State returns a sandbox's state.
func (f *Fake) State(id string) string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.sandboxes[id].State
}

// SetState sets a sandbox's state.
func (f *Fake) SetState(id, state string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.sandboxes[id].State = state
}

// Requests returns "METHOD PATH" of every request so far.
func (f *Fake) Requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.requests...)
}

func (f *Fake) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		f.requests = append(f.requests, r.Method+" "+r.URL.Path)
		f.mu.Unlock()
		if r.Header.Get("Authorization") != "Bearer "+Token {
			writeErr(w, http.StatusUnauthorized, "Unauthorized")
			return
		}
		f.mu.Lock()
		org := f.orgID
		f.mu.Unlock()
		if org != "" && r.Header.Get("X-Daytona-Organization-ID") != org {
			writeErr(w, http.StatusForbidden, "organization id missing or wrong")
			return
		}
		if r.Header.Get("X-Daytona-SDK-Version") == "" {
			writeErr(w, http.StatusBadRequest, "missing X-Daytona-SDK-Version")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeErr(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]any{"statusCode": status, "message": msg, "error": http.StatusText(status)})
}

func (f *Fake) sandboxJSON(sb *Sandbox) map[string]any {
	return map[string]any{
		"id": sb.ID, "organizationId": "org", "name": sb.ID, "user": "daytona",
		"env": map[string]string{}, "labels": map[string]string{}, "public": false,
		"networkBlockAll": false, "target": "us", "cpu": 1, "gpu": 0, "memory": 1, "disk": 3,
		"state": sb.State, "toolboxProxyUrl": f.URL + "/toolbox",
		"errorReason": "fake failure", "recoverable": false,
	}
}

func (f *Fake) lookup(w http.ResponseWriter, r *http.Request) *Sandbox {
	sb := f.sandboxes[r.PathValue("id")]
	if sb == nil {
		writeErr(w, http.StatusNotFound, "Sandbox with ID or name "+r.PathValue("id")+" not found")
	}
	return sb
}

func (f *Fake) getSandbox(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	if sb.State == "starting" {
		if sb.StartPolls <= 0 {
			sb.State = "started"
		} else {
			sb.StartPolls--
		}
	}
	writeJSON(w, http.StatusOK, f.sandboxJSON(sb))
}

func (f *Fake) startSandbox(w http.ResponseWriter, r *http.Request) {
	f.mu.Lock()
	defer f.mu.Unlock()
	sb := f.lookup(w, r)
	if sb == nil {
		return
	}
	switch sb.State {
	case "started":
	case "stopped", "archived", "paused":
		sb.State = "starting"
	case "starting":
		writeErr(w, http.StatusConflict, "State change in progress")
		return
	default:
		writeErr(w, http.StatusBadRequest, "Sandbox is not in valid state")
		return
	}
	writeJSON(w, http.StatusOK, f.sandboxJSON(sb))
}

// tb guards the toolbox routes: the sandbox must exist and be started (the
// real proxy's answer for a stopped sandbox is not known: 502 here).
func (f *Fake) tb(h func(http.ResponseWriter, *http.Request, *Sandbox)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		f.mu.Lock()
		sb := f.sandboxes[r.PathValue("id")]
		var root string
		state := ""
		var env []string
		if sb != nil {
			state, root, env = sb.State, sb.Root, sb.Env
		}
		f.mu.Unlock()
		if sb == nil {
			writeErr(w, http.StatusNotFound, "sandbox not found")
			return
		}
		if state != "started" {
			writeErr(w, http.StatusBadGateway, "sandbox is not running")
			return
		}
		h(w, r, &Sandbox{ID: sb.ID, Root: root, Env: env})
	}
}

// path returns the query parameter name as a path inside the sandbox's
// Root, or answers 403.
func (sb *Sandbox) path(w http.ResponseWriter, r *http.Request, name string) (string, bool) {
	p := r.URL.Query().Get(name)
	clean := filepath.Clean(p)
	root := filepath.Clean(sb.Root)
	if !filepath.IsAbs(p) || (clean != root && !strings.HasPrefix(clean, root+"/")) {
		writeErr(w, http.StatusForbidden, fmt.Sprintf("path %q is outside the sandbox", p))
		return "", false
	}
	return clean, true
}

func statusOf(err error) int {
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return http.StatusNotFound
	case errors.Is(err, fs.ErrPermission):
		return http.StatusForbidden
	}
	return http.StatusBadRequest
}

func fileInfo(name string, fi os.FileInfo) map[string]any {
	uid, gid := "0", "0"
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		uid, gid = strconv.Itoa(int(st.Uid)), strconv.Itoa(int(st.Gid))
	}
	return map[string]any{
		"name": name, "size": fi.Size(), "mode": fi.Mode().String(),
		"modTime": fi.ModTime().String(), "modifiedAt": fi.ModTime().UTC().Format(time.RFC3339),
		"isDir": fi.IsDir(), "owner": uid, "group": gid,
		"permissions": fmt.Sprintf("%04o", fi.Mode().Perm()),
	}
}

func (f *Fake) listFiles(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	ents, err := os.ReadDir(p)
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	out := []map[string]any{}
	for _, e := range ents {
		fi, err := os.Stat(filepath.Join(p, e.Name()))
		if err != nil {
			continue
		}
		out = append(out, fileInfo(e.Name(), fi))
	}
	writeJSON(w, http.StatusOK, out)
}

func (f *Fake) fileInfo(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	fi, err := os.Stat(p)
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	writeJSON(w, http.StatusOK, fileInfo(fi.Name(), fi))
}

func (f *Fake) download(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	fi, err := os.Stat(p)
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	if fi.IsDir() {
		writeErr(w, http.StatusBadRequest, "path is a directory")
		return
	}
	w.Header().Set("Content-Type", "application/octet-stream")
	http.ServeFile(w, r, p)
}

func (f *Fake) upload(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	file, _, err := r.FormFile("file")
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	defer file.Close()
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	out, err := os.Create(p)
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	_, err = io.Copy(out, file)
	_ = out.Close() // like gin's SaveUploadedFile: close errors are lost
	if err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	w.WriteHeader(http.StatusOK)
}

func (f *Fake) deleteFile(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	fi, err := os.Stat(p)
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	if fi.IsDir() {
		if r.URL.Query().Get("recursive") != "true" {
			writeErr(w, http.StatusBadRequest, "cannot delete directory without recursive flag")
			return
		}
		err = os.RemoveAll(p)
	} else {
		err = os.Remove(p)
	}
	if err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (f *Fake) mkdir(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	mode, err := strconv.ParseUint(r.URL.Query().Get("mode"), 8, 32)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad mode")
		return
	}
	if err := os.MkdirAll(p, os.FileMode(mode)); err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusCreated)
}

func (f *Fake) chmod(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	p, ok := sb.path(w, r, "path")
	if !ok {
		return
	}
	mode, err := strconv.ParseUint(r.URL.Query().Get("mode"), 8, 32)
	if err != nil {
		writeErr(w, http.StatusBadRequest, "bad mode")
		return
	}
	if err := os.Chmod(p, os.FileMode(mode)); err != nil {
		writeErr(w, statusOf(err), err.Error())
		return
	}
	w.WriteHeader(http.StatusOK)
}

// execute runs the command like the daemon: written to the stdin of sh, in
// its own process group, stdout and stderr merged; on timeout the group is
// killed and the answer is 408.
func (f *Fake) execute(w http.ResponseWriter, r *http.Request, sb *Sandbox) {
	var req struct {
		Command string            `json:"command"`
		Cwd     string            `json:"cwd"`
		Envs    map[string]string `json:"envs"`
		Timeout int               `json:"timeout"`
	}
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		writeErr(w, http.StatusBadRequest, err.Error())
		return
	}
	ctx := r.Context()
	if req.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(req.Timeout)*time.Second)
		defer cancel()
	}
	cmd := exec.Command("sh")
	cmd.Stdin = strings.NewReader(req.Command)
	cmd.Dir = sb.Root
	if req.Cwd != "" {
		cmd.Dir = req.Cwd
	}
	cmd.Env = append(os.Environ(), sb.Env...)
	for k, v := range req.Envs {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		writeJSON(w, http.StatusOK, map[string]any{"exitCode": -1, "result": err.Error()})
		return
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		writeErr(w, http.StatusRequestTimeout, "command execution timeout")
		return
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	writeJSON(w, http.StatusOK, map[string]any{"exitCode": code, "result": out.String()})
}
