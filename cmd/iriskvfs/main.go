// Command iriskvfs is the CLI of the agent key-value cache: it mounts the
// cache, and administers a store (put, get, ls, rm, stats, prune, clear,
// fsck). The commands are thin: they parse flags and call the packages.
package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

// Exit codes: 0 success, 1 failure (one line on stderr), 2 usage error.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// version is set with -ldflags "-X main.version=…"; otherwise it comes from
// the module's build information.
var version = ""

func main() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) }

// usageError marks errors that are the caller's misuse of the CLI.
type usageError struct{ err error }

func (u usageError) Error() string { return u.err.Error() }
func (u usageError) Unwrap() error { return u.err }

func usagef(format string, args ...any) error {
	return usageError{fmt.Errorf(format, args...)}
}

// run executes the CLI and returns its exit code. Every error becomes one
// line on stderr; nothing panics out of it.
func run(args []string, stdin io.Reader, stdout, stderr io.Writer) (code int) {
	defer func() {
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "iriskvfs: internal error: %v (please report it)\n", r)
			code = exitFailure
		}
	}()
	app := newApp(stdin, stdout, stderr)
	args = reorderArgs(app, args)
	if name := commandName(app, args); name != "" && findCommand(app.Commands, name) == nil {
		fmt.Fprintf(stderr, "iriskvfs: unknown command %q (see 'iriskvfs --help')\n", name)
		return exitUsage
	}
	err := app.Run(args)
	if err == nil {
		return exitOK
	}
	var ue usageError
	if errors.As(err, &ue) {
		fmt.Fprintf(stderr, "iriskvfs: %v (see 'iriskvfs --help')\n", ue.err)
		return exitUsage
	}
	var ec cli.ExitCoder
	if errors.As(err, &ec) {
		if msg := strings.TrimSpace(err.Error()); msg != "" {
			fmt.Fprintln(stderr, "iriskvfs: "+oneLine(msg))
		}
		return ec.ExitCode()
	}
	fmt.Fprintln(stderr, "iriskvfs: "+oneLine(err.Error()))
	return exitFailure
}

// commandName is the first argument after the global flags.
func commandName(app *cli.App, args []string) string {
	_, rest := pullFlags(args[1:], app.Flags, true)
	if len(rest) == 0 || strings.HasPrefix(rest[0], "-") {
		return ""
	}
	if rest[0] == "help" || rest[0] == "h" {
		// "help TOPIC": the topic must be a command.
		if len(rest) > 1 && !strings.HasPrefix(rest[1], "-") {
			return rest[1]
		}
		return ""
	}
	return rest[0]
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}

// oneLine joins the lines of a message: some errors (yaml's "unmarshal
// errors:\n  line 2: field x not found") put their reason on a later line.
func oneLine(s string) string {
	var parts []string
	for _, l := range strings.Split(s, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			parts = append(parts, l)
		}
	}
	return strings.Join(parts, " ")
}

func buildVersion() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v := bi.Main.Version; v != "" && v != "(devel)" {
			return v
		}
		var rev, dirty string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "-dirty"
				}
			}
		}
		if len(rev) > 12 {
			rev = rev[:12]
		}
		if rev != "" {
			return "devel-" + rev + dirty
		}
	}
	return "devel"
}

func newApp(stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	app := &cli.App{
		Name:                      "iriskvfs",
		Usage:                     "an AI agent's key-value cache, mounted as a FUSE filesystem",
		Version:                   buildVersion(),
		Reader:                    stdin,
		Writer:                    stdout,
		ErrWriter:                 stderr,
		DisableSliceFlagSeparator: true,
		Flags:                     globalFlags(),
		Commands:                  commands(),
		ExitErrHandler:            func(*cli.Context, error) {}, // run() reports errors
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
	for _, c := range app.Commands {
		setUsageHandler(c)
	}
	return app
}

func setUsageHandler(c *cli.Command) {
	c.OnUsageError = func(_ *cli.Context, err error, _ bool) error { return usageError{err} }
	for _, sub := range c.Subcommands {
		setUsageHandler(sub)
	}
}

// reorderArgs moves flags that follow positional arguments in front of
// them. urfave/cli v2 stops parsing flags at the first positional argument
// and would silently take "put task k - --ttl 6h" as four positionals; here
// flags work before or after, and "--" still ends the flags.
func reorderArgs(app *cli.App, args []string) []string {
	if len(args) < 2 {
		return args
	}
	out := []string{args[0]}
	rest := args[1:]
	globals, rest := pullFlags(rest, app.Flags, true)
	out = append(out, globals...)
	if len(rest) == 0 {
		return out
	}
	cmds := app.Commands
	var cmd *cli.Command
	for len(rest) > 0 {
		c := findCommand(cmds, rest[0])
		if c == nil {
			break
		}
		out = append(out, rest[0])
		rest = rest[1:]
		cmd = c
		if len(c.Subcommands) == 0 {
			break
		}
		cmds = c.Subcommands
	}
	if cmd == nil {
		return append(out, rest...)
	}
	// A flag that needs a value but ends the line would take as its value
	// whatever the reordering puts after it ("--", or the command name):
	// leave it last and alone, for urfave/cli to reject.
	if d, global := danglingFlag(rest, app.Flags, cmd.Flags); global {
		return []string{out[0], d}
	} else if d != "" {
		return append(out, d)
	}
	// Global flags given after the command name move back in front of it.
	var moreGlobals []string
	moreGlobals, rest = pullFlags(rest, app.Flags, false)
	if len(moreGlobals) > 0 {
		head := append([]string{out[0]}, moreGlobals...)
		out = append(head, out[1:]...)
	}
	flags, positionals := splitFlags(rest, cmd.Flags)
	out = append(out, flags...)
	if len(positionals) > 0 {
		out = append(out, "--")
		out = append(out, positionals...)
	}
	return out
}

// pullFlags takes the flags of set out of args. With leading, it stops at
// the first token that is not one of them.
func pullFlags(args []string, set []cli.Flag, leading bool) (flags, rest []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(rest, args[i:]...)
		}
		name, hasValue, isFlag := flagName(a)
		f := lookupFlag(set, name)
		if !isFlag || f == nil {
			if leading {
				return flags, append(rest, args[i:]...)
			}
			rest = append(rest, a)
			continue
		}
		flags = append(flags, a)
		if !hasValue && takesValue(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, rest
}

// splitFlags separates a command's flags (with their values) from its
// positional arguments. Unknown flags stay flags, for urfave/cli to reject.
func splitFlags(args []string, set []cli.Flag) (flags, positionals []string) {
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return flags, append(positionals, args[i+1:]...)
		}
		name, hasValue, isFlag := flagName(a)
		if !isFlag {
			positionals = append(positionals, a)
			continue
		}
		flags = append(flags, a)
		if f := lookupFlag(set, name); f != nil && !hasValue && takesValue(f) && i+1 < len(args) {
			i++
			flags = append(flags, args[i])
		}
	}
	return flags, positionals
}

// danglingFlag returns the last of args when it is a flag (global or the
// command's) that needs a value and has none.
func danglingFlag(args []string, globals, locals []cli.Flag) (flag string, global bool) {
	for i := 0; i < len(args); i++ {
		if args[i] == "--" {
			break
		}
		name, hasValue, isFlag := flagName(args[i])
		if !isFlag || hasValue {
			continue
		}
		f, g := lookupFlag(globals, name), true
		if f == nil {
			f, g = lookupFlag(locals, name), false
		}
		if f == nil || !takesValue(f) {
			continue
		}
		if i+1 == len(args) {
			return args[i], g
		}
		i++
	}
	return "", false
}

func flagName(a string) (name string, hasValue, isFlag bool) {
	if len(a) < 2 || a[0] != '-' {
		return "", false, false
	}
	name = strings.TrimLeft(a, "-")
	name, _, hasValue = strings.Cut(name, "=")
	return name, hasValue, name != ""
}

func lookupFlag(set []cli.Flag, name string) cli.Flag {
	for _, f := range set {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

func takesValue(f cli.Flag) bool {
	if dg, ok := f.(cli.DocGenerationFlag); ok {
		return dg.TakesValue()
	}
	return false
}

func findCommand(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}
