package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/iriskvfs/iriskvfs/integration/daytona"
)

func sandboxCommand() *cli.Command {
	return &cli.Command{
		Name:  "sandbox",
		Usage: "manage the cache in Daytona sandboxes (DAYTONA_API_KEY, DAYTONA_API_URL, …)",
		Subcommands: []*cli.Command{{
			Name:      "init",
			Usage:     "start the sandbox, install fuse3 and this binary, mount the cache (--daemon --seed) and check it",
			ArgsUsage: "SANDBOX_ID",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "dir", Value: daytona.DefaultDir, Usage: "`DIR` of iriskvfs in the sandbox (DIR/bin/iriskvfs, DIR/kv-cache, DIR/kv-store)"},
				&cli.StringFlag{Name: "binary", Usage: "linux `FILE` to install (default: this program; it must run here, to tell its version)"},
				&cli.DurationFlag{Name: "start-timeout", Value: 60 * time.Second, Usage: "how long to wait for the sandbox to start"},
			},
			Action: cmdSandboxInit,
		}},
	}
}

func cmdSandboxInit(c *cli.Context) error {
	if err := wantArgs(c, 1, 1); err != nil {
		return err
	}
	id := c.Args().First()
	cfg, err := daytona.ConfigFromEnv()
	if err != nil {
		return err
	}
	cfg.StartTimeout = c.Duration("start-timeout")
	client, err := daytona.New(cfg)
	if err != nil {
		return err
	}
	opts := daytona.InitOptions{
		Layout: daytona.Layout{Dir: c.String("dir")},
		Report: func(line string) { fmt.Fprintln(c.App.Writer, line) },
	}
	if bin := c.String("binary"); bin != "" {
		if opts.Binary, err = filepath.Abs(bin); err != nil {
			return err
		}
		out, err := exec.Command(opts.Binary, "version").Output()
		if err != nil {
			return fmt.Errorf("cannot tell the version of %s (%v): it must run here", bin, err)
		}
		opts.Version = strings.TrimSpace(firstLine(string(out)))
	} else {
		if runtime.GOOS != "linux" {
			return fmt.Errorf("this program is built for %s, not linux: pass --binary", runtime.GOOS)
		}
		if opts.Binary, err = os.Executable(); err != nil {
			return err
		}
		opts.Version = "iriskvfs " + c.App.Version
		opts.GOARCH = runtime.GOARCH
	}
	ctx, stop := signal.NotifyContext(c.Context, os.Interrupt, syscall.SIGTERM)
	defer stop()
	_, err = client.Init(ctx, id, opts)
	if ctx.Err() != nil && err != nil {
		return fmt.Errorf("interrupted: %w", err)
	}
	return err
}
