package main

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"
	"golang.org/x/sys/unix"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
)

// exitFallback is refs' exit code when it printed the sets inline because
// the cache could not be trusted: the prompt builder can tell it apart.
const exitFallback = 3

func instructionCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name: "seed", Usage: "write the canonical instruction sets that are missing, expired, corrupt or outdated",
			Flags:  []cli.Flag{&cli.BoolFlag{Name: "force", Usage: "rewrite every set"}},
			Action: cmdSeed,
		},
		{
			Name:  "refs",
			Usage: "print the prompt's reference block, after checking the cache serves every set",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "mount", Value: instructions.DefaultMount, Usage: "the mount `PATH` the block names and the check reads"},
				&cli.BoolFlag{Name: "hash", Usage: "print the block's SHA-256 instead"},
				&cli.BoolFlag{Name: "report", Usage: "print the token report instead"},
				&cli.BoolFlag{Name: "json", Usage: "with --report: JSON"},
				&cli.BoolFlag{Name: "no-check", Usage: "print the block without checking the mount"},
				&cli.StringFlag{Name: "fallback", Usage: "`inline`: if the check fails, print the sets inline (exit 3)"},
			},
			Action: cmdRefs,
		},
	}
}

func cmdSeed(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		actions, err := b.Seed(c.Context, c.Bool("force"))
		if err != nil {
			return err
		}
		changed := 0
		for _, a := range actions {
			fmt.Fprintln(c.App.Writer, a.String())
			if a.Did != "unchanged" {
				changed++
			}
		}
		fmt.Fprintf(c.App.Writer, "seed: %d of %d instruction sets written\n", changed, len(actions))
		return nil
	})
}

func cmdRefs(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	fb := c.String("fallback")
	if fb != "" && fb != "inline" {
		return usagef("--fallback %q: the only fallback is inline", fb)
	}
	mount, err := filepath.Abs(c.String("mount"))
	if err != nil {
		return err
	}
	w := c.App.Writer
	switch {
	case c.Bool("hash"):
		fmt.Fprintln(w, instructions.BlockHash(mount))
		return nil
	case c.Bool("report"):
		r := instructions.Measure(mount)
		if c.Bool("json") {
			return writeJSON(w, r)
		}
		fmt.Fprint(w, r.String())
		return nil
	}
	if !c.Bool("no-check") {
		if err := checkMount(mount, 5*time.Second); err != nil {
			if fb == "inline" {
				fmt.Fprintf(c.App.ErrWriter, "iriskvfs: the cache at %s is not usable (%v): printed the instruction sets inline\n", mount, err)
				if _, werr := w.Write(instructions.Inline()); werr != nil {
					return werr
				}
				return cli.Exit("", exitFallback)
			}
			return fmt.Errorf("the cache at %s is not usable: %w (use --fallback inline to print the sets instead)", mount, err)
		}
	}
	_, err = w.Write(instructions.Block(mount))
	return err
}

// checkMount checks, through the mount, that every canonical set is there
// with the canonical fingerprint (user.iris.fingerprint, which the daemon
// verifies the bytes against on every open) and size. It opens nothing, so
// the check does not count as an agent's read in the telemetry. A mount
// whose daemon hangs would block forever, so it runs under a deadline.
func checkMount(mount string, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() {
		for _, s := range instructions.Canonical() {
			p := filepath.Join(mount, instructions.Scope, s.Key)
			fi, err := os.Stat(p)
			if err != nil {
				done <- err
				return
			}
			buf := make([]byte, 128)
			n, err := unix.Getxattr(p, "user.iris.fingerprint", buf)
			if err != nil {
				done <- fmt.Errorf("%s: no fingerprint (%v): is this an iriskvfs mount?", p, err)
				return
			}
			sum := sha256.Sum256(s.Content)
			if string(buf[:n]) != hex.EncodeToString(sum[:]) || fi.Size() != int64(len(s.Content)) {
				done <- fmt.Errorf("%s is not the canonical version %s (run 'iriskvfs seed')", p, s.Version)
				return
			}
		}
		done <- nil
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(timeout):
		return fmt.Errorf("no answer from the mount in %s", timeout)
	}
}
