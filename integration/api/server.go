package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// DefaultMaxBody bounds a POSTed value on the TCP server by default.
const DefaultMaxBody = 256 << 20

// ServerConfig configures the REST server of `iriskvfs serve`.
type ServerConfig struct {
	// Backend is the local cache ({id} = "local"); /healthz and the store
	// metrics of /metrics read its stats. It may be nil when Resolve is set
	// (then /healthz only says the process is up).
	Backend Backend
	// Resolve maps {id} to a backend (default: LocalResolver(Backend)).
	// Another backend (a remote sandbox) plugs in here.
	Resolve Resolver
	// Token is the bearer token every request but /healthz needs ("" for
	// none: loopback only, which the caller enforces).
	Token string
	// MaxBody bounds a POSTed value (0: DefaultMaxBody; <0: unbounded).
	MaxBody int64
	// Log receives one structured line per request (method, route, status,
	// duration: never values, query strings or tokens) and the failures.
	Log *slog.Logger
}

// Server is the REST API: the kv-cache routes, /healthz and /metrics, with
// auth, logs and metrics around them.
type Server struct {
	cfg     ServerConfig
	log     *slog.Logger
	metrics *metrics
	healthz http.Handler
	metricz http.Handler
	api     http.Handler
}

// NewServer builds the server's handler.
func NewServer(cfg ServerConfig) *Server {
	if cfg.Resolve == nil {
		cfg.Resolve = LocalResolver(cfg.Backend)
	}
	resolve := cfg.Resolve
	cfg.Resolve = func(ctx context.Context, id string) (Backend, error) {
		b, err := resolve(ctx, id)
		if err != nil {
			return nil, err
		}
		return checked{b}, nil
	}
	switch {
	case cfg.MaxBody == 0:
		cfg.MaxBody = DefaultMaxBody
	case cfg.MaxBody < 0:
		cfg.MaxBody = 0
	}
	s := &Server{cfg: cfg, log: cfg.Log}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	s.metrics = newMetrics(cfg.Backend)
	api := &Handler{Resolve: cfg.Resolve, Log: s.log, MaxBody: cfg.MaxBody}
	s.healthz = http.HandlerFunc(s.health)
	s.metricz = requireToken(cfg.Token, onlyGet(s.metrics.handler()))
	s.api = requireToken(cfg.Token, api)
	return s
}

func onlyGet(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: r.Method + " is not allowed on " + r.URL.Path})
			return
		}
		h.ServeHTTP(w, r)
	})
}

// health answers 200 when the backend answers a stats call, else 503.
func (s *Server) health(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: r.Method + " is not allowed on /healthz"})
		return
	}
	if s.cfg.Backend != nil {
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		if _, err := s.cfg.Backend.Stats(ctx); err != nil {
			s.log.Warn("health check failed", "err", err.Error())
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusServiceUnavailable)
			_ = json.NewEncoder(w).Encode(map[string]any{
				"status": "unavailable",
				"error":  &Error{Code: "unavailable", Message: "backend does not answer: " + err.Error()},
			})
			return
		}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write([]byte("{\"status\":\"ok\"}\n"))
}

// statusWriter records the status a handler wrote.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int64
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(p []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(p)
	w.bytes += int64(n)
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// ServeHTTP serves a request: routes it, recovers a panic into a 500, logs
// it and counts it.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	sw := &statusWriter{ResponseWriter: w}
	route, method := routeLabel(r.URL.Path), methodLabel(r.Method)
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler {
				panic(p)
			}
			s.log.Error("handler panic", "method", method, "route", route, "panic", fmt.Sprint(p))
			if sw.status == 0 {
				writeError(sw, &Error{Status: http.StatusInternalServerError, Code: "internal", Message: "internal error"})
			}
		}
		if sw.status == 0 {
			sw.status = http.StatusOK
		}
		d := time.Since(start)
		s.metrics.observe(route, method, sw.status, d)
		s.log.Info("request", "method", method, "route", route, "status", sw.status,
			"duration_ms", float64(d.Microseconds())/1000, "bytes_out", sw.bytes, "remote", r.RemoteAddr)
	}()
	sw.Header().Set("Cache-Control", "no-store")
	// Paths are matched as they come: no cleaning, no redirects (an
	// http.ServeMux would answer "//x" or "/a/../b" with an HTML redirect).
	switch r.URL.Path {
	case "/healthz":
		s.healthz.ServeHTTP(sw, r)
	case "/metrics":
		s.metricz.ServeHTTP(sw, r)
	default:
		s.api.ServeHTTP(sw, r)
	}
}

// Serve serves s on ln until ctx is done, then shuts down gracefully:
// no new connections, and requests in flight get up to grace to finish.
func (s *Server) Serve(ctx context.Context, ln net.Listener, grace time.Duration) error {
	srv := &http.Server{
		Handler:           s,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelWarn),
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	err := srv.Shutdown(sctx)
	if errors.Is(err, context.DeadlineExceeded) {
		srv.Close()
		err = fmt.Errorf("shutdown: requests still running after %s were cut", grace)
	}
	if serr := <-errc; serr != nil && !errors.Is(serr, http.ErrServerClosed) && err == nil {
		err = serr
	}
	return err
}
