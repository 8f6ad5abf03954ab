package main

import (
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
)

// pprofEnv names the loopback address (e.g. 127.0.0.1:6060) on which a
// mount daemon serves Go's profiles (/debug/pprof/) for its developers:
// `go tool pprof http://127.0.0.1:6060/debug/pprof/heap`. Unset: nothing
// listens. Off loopback it is refused, as the profiles show key names.
const pprofEnv = "IRISKVFS_PPROF"

// startPprof serves the profiles if pprofEnv asks for them.
func startPprof(log *slog.Logger) {
	addr := os.Getenv(pprofEnv)
	if addr == "" {
		return
	}
	host, _, err := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); err != nil || (host != "localhost" && (ip == nil || !ip.IsLoopback())) {
		log.Warn("not serving profiles: "+pprofEnv+" must be a loopback host:port", "addr", addr)
		return
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("not serving profiles", "addr", addr, "err", err)
		return
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	log.Info("serving profiles", "addr", l.Addr().String())
	go func() { _ = http.Serve(l, mux) }()
}
