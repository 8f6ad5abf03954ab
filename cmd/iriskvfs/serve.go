package main

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/integration/daytona"
	"github.com/iriskvfs/iriskvfs/store"
)

// defaultServeAddr is where `serve` listens unless told otherwise: loopback,
// where it may run without a token.
const defaultServeAddr = "127.0.0.1:8088"

// serveShutdownGrace is how long requests in flight may run after SIGTERM.
const serveShutdownGrace = 10 * time.Second

func serveCommand() *cli.Command {
	return &cli.Command{
		Name:  "serve",
		Usage: "serve the REST API (/api/sandboxes/local/kv-cache/..., /healthz, /metrics)",
		Description: "Serves this machine's store as {id} \"local\": through the mount daemon's admin socket\n" +
			"when a daemon holds the store, else by opening the store (and then serving the admin\n" +
			"socket too, so that the other commands keep working meanwhile). Every request but\n" +
			"/healthz needs \"Authorization: Bearer TOKEN\" when a token is set (--token-file, or\n" +
			"$" + api.TokenEnv + "); without a token, serve listens only on a loopback address.",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr", Usage: "listen on `HOST:PORT`", Value: defaultServeAddr},
			&cli.StringFlag{Name: "token-file", Usage: "read the bearer token from `FILE` (mode 0600; default: $" + api.TokenEnv + ")"},
			&cli.Int64Flag{Name: "max-body", Usage: "largest value a POST may carry, in `BYTES`", Value: api.DefaultMaxBody},
			&cli.BoolFlag{Name: "daytona", Usage: "serve Daytona sandboxes: {id} is a sandbox id (credentials from DAYTONA_API_KEY or DAYTONA_JWT_TOKEN + DAYTONA_ORGANIZATION_ID, DAYTONA_API_URL)"},
		},
		Action: cmdServe,
	}
}

// loopbackHost reports whether host names only loopback addresses.
func loopbackHost(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func cmdServe(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	addr := c.String("addr")
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return usagef("--addr %q: want HOST:PORT", addr)
	}
	if c.Int64("max-body") <= 0 {
		return usagef("--max-body %d: want a positive number of bytes", c.Int64("max-body"))
	}
	token, err := api.LoadToken(c.String("token-file"), os.Getenv(api.TokenEnv))
	if err != nil {
		return err
	}
	if token == "" && !loopbackHost(host) {
		return cli.Exit(fmt.Sprintf("serve: refusing to listen on %s without a token: set --token-file or $%s, or listen on 127.0.0.1", addr, api.TokenEnv), exitFailure)
	}
	policy, err := loadPolicy(c)
	if err != nil {
		return err
	}
	log := slog.New(slog.NewJSONHandler(c.App.ErrWriter, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if c.Bool("daytona") {
		cfg, err := daytona.ConfigFromEnv()
		if err != nil {
			return err
		}
		client, err := daytona.New(cfg)
		if err != nil {
			return err
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("serve: %w", err)
		}
		srv := api.NewServer(api.ServerConfig{Resolve: daytona.Resolver(client, daytona.Layout{}), Token: token, MaxBody: c.Int64("max-body"), Log: log})
		ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
		defer stop()
		log.Info("serving", "addr", ln.Addr().String(), "backend", "daytona", "api_url", cfg.APIURL, "auth", token != "", "pid", os.Getpid())
		return srv.Serve(ctx, ln, serveShutdownGrace)
	}

	// The backend, as withBackend picks it: the daemon's socket when one
	// answers, else the store itself, held for as long as we serve.
	var backend api.Backend
	via := "store"
	sock := api.SocketPath(c.String("store"))
	if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		conn.Close()
		backend, via = api.NewSocketClient(sock), "admin socket"
	} else {
		s, err := store.Open(c.String("store"), store.Options{
			Policy: policy, Logger: log, TrackReads: []string{instructions.Scope},
			CheckpointChanges: checkpointChanges(),
		})
		if err != nil {
			return err
		}
		defer s.Close()
		local := api.Local{Store: s}
		admin, err := api.ServeAdmin(s.Dir(), local, log)
		if err != nil {
			return err
		}
		defer admin.Close()
		backend = local
	}

	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("serve: %w", err)
	}
	srv := api.NewServer(api.ServerConfig{Backend: backend, Token: token, MaxBody: c.Int64("max-body"), Log: log})
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if token == "" {
		log.Warn("no API token: serving without authentication (loopback only)", "addr", ln.Addr().String())
	}
	log.Info("serving", "addr", ln.Addr().String(), "backend", via, "store", c.String("store"), "auth", token != "", "pid", os.Getpid())
	err = srv.Serve(ctx, ln, serveShutdownGrace)
	log.Info("stopped", "addr", ln.Addr().String())
	return err
}
