package daytona

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	toolbox "github.com/daytonaio/daytona/libs/toolbox-api-client-go"
)

// ErrEmptyUpload: the generated client silently drops an empty file part,
// so an empty file cannot be uploaded (write it with a command instead).
var ErrEmptyUpload = errors.New("cannot upload an empty file through the toolbox API")

// Toolbox is the daemon inside one sandbox.
type Toolbox struct {
	sandbox string
	api     *toolbox.APIClient
}

// FileInfo is the toolbox's description of a file.
type FileInfo = toolbox.FileInfo

// ExecResult is what a command did: its exit code and its combined output.
type ExecResult struct {
	ExitCode int
	Output   string
}

// Exec runs command in the sandbox's shell (as the sandbox user), killing it
// after timeout (whole seconds, at least 1). A non-zero exit is not an error.
func (t *Toolbox) Exec(ctx context.Context, command string, timeout time.Duration) (ExecResult, error) {
	return t.ExecEnv(ctx, command, nil, timeout)
}

// ExecEnv is Exec with extra environment variables: the way to hand
// arbitrary values to a command without quoting them into it.
func (t *Toolbox) ExecEnv(ctx context.Context, command string, env map[string]string, timeout time.Duration) (ExecResult, error) {
	secs := int32(timeout / time.Second)
	if secs < 1 {
		secs = 1
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(secs)*time.Second+15*time.Second)
	defer cancel()
	req := toolbox.NewExecuteRequest(command)
	req.SetTimeout(secs)
	if len(env) > 0 {
		req.SetEnvs(env)
	}
	res, resp, err := t.api.ProcessAPI.ExecuteCommand(ctx).Request(*req).Execute()
	if err != nil {
		if resp != nil && resp.StatusCode == http.StatusRequestTimeout {
			return ExecResult{}, fmt.Errorf("daytona exec: command timed out after %ds: %s", secs, command)
		}
		return ExecResult{}, classify("exec", resp, err, false)
	}
	return ExecResult{ExitCode: int(res.GetExitCode()), Output: res.GetResult()}, nil
}

// Upload copies the local file src to path in the sandbox (created 0666
// minus the umask: never executable).
func (t *Toolbox) Upload(ctx context.Context, src, path string) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close() // the client closes it too
	if fi, err := f.Stat(); err != nil {
		return err
	} else if fi.Size() == 0 {
		return ErrEmptyUpload
	}
	_, resp, err := t.api.FileSystemAPI.UploadFile(ctx).Path(path).File(f).Execute()
	if err != nil {
		return classify("upload "+path, resp, err, false)
	}
	return nil
}

// WriteFile writes data (not empty: ErrEmptyUpload) to path in the sandbox.
func (t *Toolbox) WriteFile(ctx context.Context, path string, r io.Reader) error {
	tmp, err := os.CreateTemp("", "iriskvfs-upload-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	_, err = io.Copy(tmp, r)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return t.Upload(ctx, tmp.Name(), path)
}

// ReadFile returns the content of path in the sandbox.
func (t *Toolbox) ReadFile(ctx context.Context, path string) ([]byte, error) {
	f, resp, err := t.api.FileSystemAPI.DownloadFile(ctx).Path(path).Execute()
	if f != nil {
		// The client leaves the body in a temporary file.
		defer os.Remove(f.Name())
		defer f.Close()
	}
	if err != nil {
		return nil, classify("download "+path, resp, err, false)
	}
	if f == nil { // an empty body
		return nil, nil
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return nil, err
	}
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, f); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// Stat describes path in the sandbox.
func (t *Toolbox) Stat(ctx context.Context, path string) (*FileInfo, error) {
	fi, resp, err := t.api.FileSystemAPI.GetFileInfo(ctx).Path(path).Execute()
	if err != nil {
		return nil, classify("stat "+path, resp, err, false)
	}
	return fi, nil
}

// List lists the directory dir in the sandbox.
func (t *Toolbox) List(ctx context.Context, dir string) ([]FileInfo, error) {
	fis, resp, err := t.api.FileSystemAPI.ListFiles(ctx).Path(dir).Execute()
	if err != nil {
		return nil, classify("list "+dir, resp, err, false)
	}
	return fis, nil
}

// Delete removes path in the sandbox (a directory only with recursive).
func (t *Toolbox) Delete(ctx context.Context, path string, recursive bool) error {
	req := t.api.FileSystemAPI.DeleteFile(ctx).Path(path)
	if recursive {
		req = req.Recursive(true)
	}
	resp, err := req.Execute()
	if err != nil {
		return classify("delete "+path, resp, err, false)
	}
	return nil
}

// Chmod sets the mode (octal, e.g. "0755") of path in the sandbox.
func (t *Toolbox) Chmod(ctx context.Context, path, mode string) error {
	resp, err := t.api.FileSystemAPI.SetFilePermissions(ctx).Path(path).Mode(mode).Execute()
	if err != nil {
		return classify("chmod "+path, resp, err, false)
	}
	return nil
}

// Mkdir creates dir and its parents in the sandbox.
func (t *Toolbox) Mkdir(ctx context.Context, dir, mode string) error {
	resp, err := t.api.FileSystemAPI.CreateFolder(ctx).Path(dir).Mode(mode).Execute()
	if err != nil {
		return classify("mkdir "+dir, resp, err, false)
	}
	return nil
}

// errorMessage extracts the message of a Daytona error body: the toolbox's
// {"message":…} / {"error":…}, the API's {"message":…|[…]}, or the raw text.
func errorMessage(body []byte) string {
	var m struct {
		Message json.RawMessage `json:"message"`
		Error   string          `json:"error"`
	}
	if json.Unmarshal(body, &m) == nil {
		var s string
		var list []string
		switch {
		case json.Unmarshal(m.Message, &s) == nil && s != "":
			return s
		case json.Unmarshal(m.Message, &list) == nil && len(list) > 0:
			return strings.Join(list, "; ")
		case m.Error != "":
			return m.Error
		}
	}
	s := strings.TrimSpace(string(body))
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}
