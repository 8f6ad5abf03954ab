package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/integration/api"
	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

const (
	defaultStore = "/workspace/.iris/kv-store"
	defaultMount = "/workspace/.iris/kv-cache"
)

func globalFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "store", Usage: "backing store `DIR`", EnvVars: []string{"IRISKVFS_STORE"}, Value: defaultStore},
		&cli.StringFlag{Name: "config", Usage: "policy `FILE` (YAML: scopes, quotas, TTLs)", EnvVars: []string{"IRISKVFS_CONFIG"}},
	}
}

func commands() []*cli.Command {
	jsonFlag := &cli.BoolFlag{Name: "json", Usage: "print JSON (stable field names, for scripts)"}
	return append(append(append(mountCommands(), instructionCommands()...), serveCommand(), sandboxCommand()), []*cli.Command{
		{
			Name: "put", Usage: "store a value (from FILE, or stdin for - or no FILE)", ArgsUsage: "SCOPE KEY [FILE|-]",
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "ttl", Usage: "lifetime of this key, e.g. 6h, 90m, 7d (default: the scope's)"},
				&cli.StringFlag{Name: "content-type", Usage: "content type (default: from the key's extension or the bytes)"},
				&cli.StringSliceFlag{Name: "meta", Usage: "metadata `NAME=VALUE` (repeatable)"},
			},
			Action: cmdPut,
		},
		{Name: "get", Usage: "print a value (verified against its fingerprint)", ArgsUsage: "SCOPE KEY", Action: cmdGet},
		{Name: "ls", Usage: "list live keys", ArgsUsage: "[SCOPE]", Flags: []cli.Flag{jsonFlag}, Action: cmdLs},
		{Name: "rm", Usage: "remove a key", ArgsUsage: "SCOPE KEY", Action: cmdRm},
		{Name: "stats", Usage: "usage, quota and counters per scope", Flags: []cli.Flag{jsonFlag}, Action: cmdStats},
		{Name: "prune", Usage: "reclaim expired entries and unreferenced files", Action: cmdPrune},
		{Name: "clear", Usage: "remove every key of a scope", ArgsUsage: "SCOPE", Action: cmdClear},
		{
			Name: "fsck", Usage: "verify every entry and the index; exit 1 if anything is wrong",
			Flags: []cli.Flag{
				&cli.BoolFlag{Name: "repair", Usage: "quarantine broken values, drop their entries, remove orphans, fix counters"},
				jsonFlag,
			},
			Action: cmdFsck,
		},
		{
			Name: "version", Usage: "print the version",
			Action: func(c *cli.Context) error {
				fmt.Fprintf(c.App.Writer, "iriskvfs %s\n", c.App.Version)
				return nil
			},
		},
	}...)
}

// loadPolicy reads --config, or returns the built-in policy.
func loadPolicy(c *cli.Context) (*quota.Policy, error) {
	if path := c.String("config"); path != "" {
		return quota.Load(path)
	}
	return quota.Default(), nil
}

// openStore opens the store for one admin command. The CLI logs nothing:
// the error it returns is its one line.
func openStore(c *cli.Context) (*store.Store, error) {
	o, err := storeOptions(c)
	if err != nil {
		return nil, err
	}
	return store.Open(c.String("store"), o)
}

func storeOptions(c *cli.Context) (store.Options, error) {
	p, err := loadPolicy(c)
	if err != nil {
		return store.Options{}, err
	}
	// Reads of the instruction sets are tracked as the daemon tracks them,
	// so that stats has the same shape offline (where nothing was read yet).
	return store.Options{
		Policy: p, Logger: slog.New(slog.DiscardHandler),
		TrackReads:        []string{instructions.Scope},
		CheckpointChanges: checkpointChanges(),
	}, nil
}

// checkpointChangesEnv sets how many index changes the journal gathers
// before a checkpoint (store.Options.CheckpointChanges): for tests that
// want checkpoints among their crashes, and for tuning.
const checkpointChangesEnv = "IRISKVFS_CHECKPOINT_CHANGES"

func checkpointChanges() int {
	n, _ := strconv.Atoi(os.Getenv(checkpointChangesEnv))
	return max(n, 0)
}

// withBackend runs fn against the store: through the mount daemon's admin
// socket when a daemon serves it, else by opening the store directly. Both
// give the same results and the same error lines.
func withBackend(c *cli.Context, fn func(api.Backend) error) error {
	// A bad --config is an error either way, even though a daemon applies
	// its own policy.
	if _, err := loadPolicy(c); err != nil {
		return err
	}
	sock := api.SocketPath(c.String("store"))
	if conn, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		conn.Close()
		return fn(api.NewSocketClient(sock))
	}
	s, err := openStore(c)
	if err != nil {
		return err
	}
	err = fn(api.Local{Store: s})
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	return err
}

func wantArgs(c *cli.Context, min, max int) error {
	n := c.NArg()
	if n < min || n > max {
		return usagef("%s: want %s, got %d argument(s)", c.Command.Name, c.Command.ArgsUsage, n)
	}
	return nil
}

func cmdPut(c *cli.Context) error {
	if err := wantArgs(c, 2, 3); err != nil {
		return err
	}
	scope, key, src := c.Args().Get(0), c.Args().Get(1), c.Args().Get(2)
	var opts api.PutOptions
	if t := c.String("ttl"); t != "" {
		d, err := quota.ParseTTL(t)
		if err != nil || d == 0 {
			return usagef("--ttl %q: want a positive duration such as 6h, 90m or 7d", t)
		}
		opts.TTL = d
	}
	opts.ContentType = c.String("content-type")
	for _, kv := range c.StringSlice("meta") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return usagef("--meta %q: want NAME=VALUE", kv)
		}
		if opts.Meta == nil {
			opts.Meta = map[string]string{}
		}
		opts.Meta[k] = v
	}
	var in io.Reader = c.App.Reader
	if src != "" && src != "-" {
		f, err := os.Open(src)
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	return withBackend(c, func(b api.Backend) error {
		e, err := b.Put(c.Context, scope, key, in, opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s/%s: %d bytes, sha256 %s, %s\n", e.Scope, e.Key, e.SizeBytes,
			e.Fingerprint, expiryPhrase(e.ExpiresAt))
		return nil
	})
}

func expiryPhrase(t *time.Time) string {
	if t == nil {
		return "never expires"
	}
	return "expires " + t.UTC().Format(time.RFC3339)
}

func cmdGet(c *cli.Context) error {
	if err := wantArgs(c, 2, 2); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		_, body, err := b.Get(c.Context, c.Args().Get(0), c.Args().Get(1))
		if err != nil {
			return err
		}
		defer body.Close()
		_, err = io.Copy(c.App.Writer, body)
		return err
	})
}

func cmdRm(c *cli.Context) error {
	if err := wantArgs(c, 2, 2); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		return b.Delete(c.Context, c.Args().Get(0), c.Args().Get(1))
	})
}

func cmdLs(c *cli.Context) error {
	if err := wantArgs(c, 0, 1); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		all, err := b.List(c.Context, c.Args().Get(0))
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, all)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
		for _, e := range all {
			name := e.Key
			if c.NArg() == 0 {
				name = e.Scope + "/" + e.Key
			}
			exp := "never"
			if e.ExpiresAt != nil {
				exp = e.ExpiresAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", name, e.SizeBytes, exp, e.ContentType)
		}
		return tw.Flush()
	})
}

func cmdStats(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		st, err := b.Stats(c.Context)
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, st)
		}
		if err := printStats(c.App.Writer, &st.Stats); err != nil {
			return err
		}
		if t := st.Instructions; t != nil {
			fmt.Fprint(c.App.Writer, "instruction reads since mount:")
			for _, set := range instructions.Canonical() {
				fmt.Fprintf(c.App.Writer, " %s %d,", set.Task, t.Reads[set.Key])
			}
			fmt.Fprintf(c.App.Writer, " restored %d\n", t.Restored)
			if len(t.NeverRead) > 0 {
				fmt.Fprintf(c.App.Writer, "never read: %s\n", strings.Join(t.NeverRead, ", "))
			}
		}
		return nil
	})
}
func printStats(w io.Writer, st *store.Stats) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "SCOPE\tKEYS\tBYTES\tQUOTA\tUSED\tTTL\tEXPIRED\t")
	for _, sc := range st.Scopes {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%.1f%%\t%s\t%d\t\n", sc.Name, sc.Keys, humanBytes(sc.Bytes),
			humanBytes(sc.QuotaBytes), 100*sc.Utilisation, ttlString(sc.TTLHours), sc.ExpiredKeys)
	}
	fmt.Fprintf(tw, "total\t%d\t%s\t%s\t\t\t\t\n", st.Keys, humanBytes(st.Bytes), humanBytes(st.QuotaBytes))
	if err := tw.Flush(); err != nil {
		return err
	}
	_, err := fmt.Fprintf(w, "hits %d, misses %d, verification failures %d, quota rejections %d\n",
		st.Hits, st.Misses, st.VerifyFailures, st.QuotaRejects)
	return err
}

func ttlString(hours float64) string {
	if hours == 0 {
		return "never"
	}
	return (time.Duration(hours * float64(time.Hour))).String()
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

func cmdPrune(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		r, err := b.Prune(c.Context)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "pruned %d expired entries (%s), removed %d unreferenced files\n",
			r.Entries, humanBytes(r.Bytes), r.Files)
		return nil
	})
}

func cmdClear(c *cli.Context) error {
	if err := wantArgs(c, 1, 1); err != nil {
		return err
	}
	return withBackend(c, func(b api.Backend) error {
		n, err := b.Clear(c.Context, c.Args().Get(0))
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "cleared %d keys from %s\n", n, c.Args().Get(0))
		return nil
	})
}

func cmdFsck(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	repair := c.Bool("repair")
	var rep *store.FsckReport
	err := withBackend(c, func(b api.Backend) error {
		var err error
		rep, err = b.Fsck(c.Context, repair)
		return err
	})
	var ae *api.Error
	switch {
	case errors.Is(err, store.ErrIndexDamaged) && repair:
		// Offline (a daemon does not start on an index it cannot read):
		// rebuild it from what is left.
		o, oerr := storeOptions(c)
		if oerr != nil {
			return oerr
		}
		rep, err = store.RebuildIndex(c.String("store"), o, err)
	case errors.As(err, &ae) && ae.Code == "index_damaged":
		return fmt.Errorf("%s (the daemon has it open: unmount first)", ae.Message)
	}
	if err != nil {
		return err
	}
	if c.Bool("json") {
		if err := writeJSON(c.App.Writer, rep); err != nil {
			return err
		}
	} else {
		for _, p := range rep.Problems {
			fmt.Fprintln(c.App.Writer, p.String())
		}
		for _, r := range rep.Repairs {
			fmt.Fprintln(c.App.Writer, "repaired: "+r)
		}
		for _, l := range rep.Lost {
			fmt.Fprintln(c.App.Writer, "lost: "+l)
		}
	}
	switch {
	case rep.Clean():
		if !c.Bool("json") {
			fmt.Fprintf(c.App.Writer, "fsck: %d entries, %d value files: clean\n", rep.Entries, rep.Blobs)
		}
		return nil
	case repair:
		if !c.Bool("json") {
			lost := ""
			if len(rep.Lost) > 0 {
				lost = fmt.Sprintf(", %d keys lost (listed above)", len(rep.Lost))
			}
			fmt.Fprintf(c.App.Writer, "fsck: %d entries, %d value files: %d problems, all repaired%s\n", rep.Entries, rep.Blobs, len(rep.Problems), lost)
		}
		return nil
	default:
		return cli.Exit(fmt.Sprintf("fsck: %d problems in %d entries (run 'iriskvfs fsck --repair' to fix)", len(rep.Problems), rep.Entries), exitFailure)
	}
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
