package api

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// SocketName is the admin socket's name in the store directory.
const SocketName = "admin.sock"

// SocketPath is the admin socket of the store in dir.
func SocketPath(storeDir string) string { return filepath.Join(storeDir, SocketName) }

// AdminServer serves a Backend on the admin socket of a store directory,
// mode 0600: only the store's owner may use it, so it needs no token.
type AdminServer struct {
	path string
	ln   net.Listener
	srv  *http.Server
	done chan struct{}
}

// ServeAdmin listens on the admin socket of storeDir (replacing a stale
// socket file: the caller owns the store's lock, so no one else serves it).
func ServeAdmin(storeDir string, b Backend, log *slog.Logger) (*AdminServer, error) {
	path := SocketPath(storeDir)
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	// Connecting needs write permission on the socket, which the usual
	// umask already withholds from others; the chmod narrows it to us.
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("admin socket: %w", err)
	}
	a := &AdminServer{
		path: path, ln: ln, done: make(chan struct{}),
		srv: &http.Server{
			Handler:           &Handler{Resolve: LocalResolver(b), Log: log},
			ReadHeaderTimeout: 10 * time.Second,
		},
	}
	go func() {
		defer close(a.done)
		_ = a.srv.Serve(ln)
	}()
	return a, nil
}

// Close stops serving and removes the socket.
func (a *AdminServer) Close() error {
	err := a.srv.Close()
	<-a.done
	os.Remove(a.path)
	return err
}
