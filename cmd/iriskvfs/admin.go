package main

import (
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/iriskvfs/iriskvfs/index"
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
	return append(mountCommands(), []*cli.Command{
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
	p, err := loadPolicy(c)
	if err != nil {
		return nil, err
	}
	return store.Open(c.String("store"), store.Options{Policy: p, Logger: slog.New(slog.DiscardHandler)})
}

// withStore runs fn on the opened store and closes it.
func withStore(c *cli.Context, fn func(*store.Store) error) error {
	s, err := openStore(c)
	if err != nil {
		return err
	}
	err = fn(s)
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
	var opts store.PutOptions
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
	return withStore(c, func(s *store.Store) error {
		e, err := s.Put(scope, key, in, opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(c.App.Writer, "%s/%s: %d bytes, sha256 %s, %s\n", e.Scope, e.Key, e.Size,
			hex.EncodeToString(e.Fingerprint[:]), expiryPhrase(e.ExpiresAt))
		return nil
	})
}

func expiryPhrase(t time.Time) string {
	if t.IsZero() {
		return "never expires"
	}
	return "expires " + t.UTC().Format(time.RFC3339)
}

func cmdGet(c *cli.Context) error {
	if err := wantArgs(c, 2, 2); err != nil {
		return err
	}
	return withStore(c, func(s *store.Store) error {
		v, err := s.Open(c.Args().Get(0), c.Args().Get(1))
		if err != nil {
			return err
		}
		defer v.Close()
		_, err = io.Copy(c.App.Writer, v.Reader())
		return err
	})
}

func cmdRm(c *cli.Context) error {
	if err := wantArgs(c, 2, 2); err != nil {
		return err
	}
	return withStore(c, func(s *store.Store) error {
		return s.Delete(c.Args().Get(0), c.Args().Get(1))
	})
}

// entryJSON is the stable JSON shape of an entry in ls --json.
type entryJSON struct {
	Scope       string            `json:"scope"`
	Key         string            `json:"key"`
	SizeBytes   int64             `json:"size_bytes"`
	ContentType string            `json:"content_type"`
	Fingerprint string            `json:"fingerprint"`
	CreatedAt   time.Time         `json:"created_at"`
	ModifiedAt  time.Time         `json:"modified_at"`
	ExpiresAt   *time.Time        `json:"expires_at"`
	TTLHours    float64           `json:"ttl_hours"`
	Mode        string            `json:"mode"`
	Metadata    map[string]string `json:"metadata"`
}

func toEntryJSON(e *index.Entry) entryJSON {
	j := entryJSON{
		Scope: e.Scope, Key: e.Key, SizeBytes: e.Size, ContentType: e.ContentType,
		Fingerprint: hex.EncodeToString(e.Fingerprint[:]),
		CreatedAt:   e.CreatedAt.UTC(), ModifiedAt: e.ModTime.UTC(),
		TTLHours: e.TTL.Hours(), Mode: fmt.Sprintf("%04o", e.Mode), Metadata: e.Meta,
	}
	if !e.ExpiresAt.IsZero() {
		t := e.ExpiresAt.UTC()
		j.ExpiresAt = &t
	}
	if j.Metadata == nil {
		j.Metadata = map[string]string{}
	}
	return j
}

func cmdLs(c *cli.Context) error {
	if err := wantArgs(c, 0, 1); err != nil {
		return err
	}
	return withStore(c, func(s *store.Store) error {
		scopes := s.Policy().Names()
		if c.NArg() == 1 {
			scopes = []string{c.Args().Get(0)}
		}
		var all []index.Entry
		for _, sc := range scopes {
			es, err := s.List(sc)
			if err != nil {
				return err
			}
			all = append(all, es...)
		}
		if c.Bool("json") {
			out := make([]entryJSON, 0, len(all))
			for i := range all {
				out = append(out, toEntryJSON(&all[i]))
			}
			return writeJSON(c.App.Writer, out)
		}
		tw := tabwriter.NewWriter(c.App.Writer, 0, 0, 2, ' ', 0)
		for i := range all {
			e := &all[i]
			name := e.Key
			if c.NArg() == 0 {
				name = e.Scope + "/" + e.Key
			}
			exp := "never"
			if !e.ExpiresAt.IsZero() {
				exp = e.ExpiresAt.UTC().Format(time.RFC3339)
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", name, e.Size, exp, e.ContentType)
		}
		return tw.Flush()
	})
}

func cmdStats(c *cli.Context) error {
	if err := wantArgs(c, 0, 0); err != nil {
		return err
	}
	return withStore(c, func(s *store.Store) error {
		st, err := s.Stats()
		if err != nil {
			return err
		}
		if c.Bool("json") {
			return writeJSON(c.App.Writer, st)
		}
		return printStats(c.App.Writer, &st)
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
	return withStore(c, func(s *store.Store) error {
		r, err := s.Prune()
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
	return withStore(c, func(s *store.Store) error {
		n, err := s.Clear(c.Args().Get(0))
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
	return withStore(c, func(s *store.Store) error {
		rep, err := s.Fsck(c.Bool("repair"))
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
		}
		switch {
		case rep.Clean():
			if !c.Bool("json") {
				fmt.Fprintf(c.App.Writer, "fsck: %d entries, %d value files: clean\n", rep.Entries, rep.Blobs)
			}
			return nil
		case c.Bool("repair"):
			if !c.Bool("json") {
				fmt.Fprintf(c.App.Writer, "fsck: %d entries, %d value files: %d problems, all repaired\n", rep.Entries, rep.Blobs, len(rep.Problems))
			}
			return nil
		default:
			return cli.Exit(fmt.Sprintf("fsck: %d problems in %d entries (run 'iriskvfs fsck --repair' to fix)", len(rep.Problems), rep.Entries), exitFailure)
		}
	})
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
