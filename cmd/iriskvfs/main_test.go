package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/iriskvfs/iriskvfs/store"
)

// crashChildEnv makes the test binary a child of the crash test.
const crashChildEnv = "IRISKVFS_CRASH_CHILD"

// TestMain installs the CLI (and test-only helper commands) as programs on
// $PATH, so that the scripts, and the tests that run the CLI as a child
// process, execute the real thing: this test binary, dispatching on argv[0].
// A crash-test child (crash_test.go) skips that set-up and runs its test.
func TestMain(m *testing.M) {
	if os.Getenv(crashChildEnv) != "" {
		os.Exit(m.Run())
	}
	// Under -race every child process would sleep 1 s at exit (GORACE
	// atexit_sleep_ms); the scripts run hundreds of them. Children inherit
	// this, and testscript passes GORACE on to the scripts.
	if g := os.Getenv("GORACE"); !strings.Contains(g, "atexit_sleep_ms") {
		os.Setenv("GORACE", strings.TrimSpace(g+" atexit_sleep_ms=0"))
	}
	// leftoverCheck (mount_test.go) fails the run if a test left a mount.
	testscript.Main(leftoverCheck{m}, map[string]func(){
		"iriskvfs": func() { os.Exit(run(os.Args, os.Stdin, os.Stdout, os.Stderr)) },
		"holdlock": holdLockMain,
	})
}

// TestScript runs the end-to-end CLI scripts in testdata/script.
func TestScript(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir:                 filepath.Join("testdata", "script"),
		RequireExplicitExec: true,
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitcode,
			"errline":  cmdErrline,
			"json":     cmdJSON,
			"waitfile": cmdWaitfile,
			"sleep":    cmdSleep,
		},
	})
}

// cliPath is the CLI program TestMain installed on $PATH.
func cliPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("iriskvfs")
	if err != nil {
		t.Fatalf("the CLI is not on $PATH (TestMain installs it): %v", err)
	}
	return p
}

// holdLockMain is the test-only program "holdlock DIR READYFILE": it opens
// the store in DIR, writes its pid to READYFILE once it holds the lock, and
// keeps the store open until SIGINT or SIGTERM (or until it is killed).
func holdLockMain() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: holdlock DIR READYFILE")
		os.Exit(2)
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	s, err := store.Open(os.Args[1], store.Options{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "holdlock:", err)
		os.Exit(1)
	}
	// Write the ready file atomically: the waiter must never see it empty.
	tmp := os.Args[2] + ".tmp"
	if err := os.WriteFile(tmp, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "holdlock:", err)
		os.Exit(1)
	}
	if err := os.Rename(tmp, os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "holdlock:", err)
		os.Exit(1)
	}
	select {
	case <-sigs:
	case <-time.After(5 * time.Minute): // never outlive a lost test
	}
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "holdlock:", err)
		os.Exit(1)
	}
}

// exitcode N PROGRAM [ARGS...]
//
// Runs PROGRAM like exec (stdin from the stdin command; stdout and stderr
// kept for the stdout, stderr and errline commands) and requires exit code N.
func cmdExitcode(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! exitcode")
	}
	if len(args) < 2 {
		ts.Fatalf("usage: exitcode N program [args...]")
	}
	want, err := strconv.Atoi(args[0])
	if err != nil {
		ts.Fatalf("exitcode: bad code %q", args[0])
	}
	got := 0
	if err := ts.Exec(args[1], args[2:]...); err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			ts.Fatalf("exitcode: %v", err)
		}
		got = ee.ExitCode()
	}
	if got != want {
		ts.Fatalf("%s exited with code %d, want %d", args[1], got, want)
	}
}

// errline [PATTERN]
//
// The last command's stderr is exactly one line, "iriskvfs: …", with no
// panic, stack trace or usage text, and matches PATTERN if given (against
// the line without its newline, so ^ and $ anchor the whole line).
func cmdErrline(ts *testscript.TestScript, neg bool, args []string) {
	if neg {
		ts.Fatalf("unsupported: ! errline")
	}
	if len(args) > 1 {
		ts.Fatalf("usage: errline [pattern]")
	}
	s := ts.ReadFile("stderr")
	if strings.Count(s, "\n") != 1 || !strings.HasSuffix(s, "\n") {
		ts.Fatalf("stderr is not exactly one line: %q", s)
	}
	if !strings.HasPrefix(s, "iriskvfs: ") {
		ts.Fatalf("stderr does not start with \"iriskvfs: \": %q", s)
	}
	for _, bad := range []string{"panic", "goroutine ", "internal error", "USAGE", "Usage:", "COMMANDS"} {
		if strings.Contains(s, bad) {
			ts.Fatalf("stderr contains %q: %q", bad, s)
		}
	}
	if len(args) == 1 {
		re, err := regexp.Compile(args[0])
		if err != nil {
			ts.Fatalf("errline: %v", err)
		}
		if !re.MatchString(strings.TrimSuffix(s, "\n")) {
			ts.Fatalf("stderr %q does not match %q", s, args[0])
		}
	}
}

// json [-re | -len] FILE PATH [WANT]
//
// FILE (or stdout/stderr) holds a JSON document; PATH selects a value in it:
// segments separated by '/', each an object field, an array index, or
// NAME=VALUE to pick the array element whose field NAME is the string VALUE
// ("." is the whole document). Without WANT the value must exist. With WANT
// it must equal WANT (as JSON, or as a string when WANT is not JSON);
// with -re its string form must match the regexp WANT; with -len it must be
// an array or object of WANT elements. With ! the check must fail.
func cmdJSON(ts *testscript.TestScript, neg bool, args []string) {
	mode := ""
	if len(args) > 0 && (args[0] == "-re" || args[0] == "-len") {
		mode, args = args[0], args[1:]
	}
	if len(args) < 2 || len(args) > 3 || (mode != "" && len(args) != 3) {
		ts.Fatalf("usage: json [-re | -len] file path [want]")
	}
	var doc any
	if err := json.Unmarshal([]byte(ts.ReadFile(args[0])), &doc); err != nil {
		ts.Fatalf("json: %s: %v", args[0], err)
	}
	err := jsonCheck(doc, args[1], mode, args[2:])
	switch {
	case err != nil && !neg:
		ts.Fatalf("json %s: %v", args[1], err)
	case err == nil && neg:
		ts.Fatalf("json %s: unexpected match", args[1])
	}
}

func jsonCheck(doc any, path, mode string, want []string) error {
	v, err := jsonSelect(doc, path)
	if err != nil || len(want) == 0 {
		return err
	}
	str, isStr := v.(string)
	if !isStr {
		b, _ := json.Marshal(v)
		str = string(b)
	}
	switch mode {
	case "-re":
		re, err := regexp.Compile(want[0])
		if err != nil {
			return err
		}
		if !re.MatchString(str) {
			return fmt.Errorf("%s does not match %q", str, want[0])
		}
	case "-len":
		n, err := strconv.Atoi(want[0])
		if err != nil {
			return err
		}
		got := -1
		switch x := v.(type) {
		case []any:
			got = len(x)
		case map[string]any:
			got = len(x)
		}
		if got != n {
			return fmt.Errorf("has %d elements, want %d: %s", got, n, str)
		}
	default:
		var w any
		if err := json.Unmarshal([]byte(want[0]), &w); err == nil && reflect.DeepEqual(v, w) {
			return nil
		}
		if isStr && str == want[0] {
			return nil
		}
		return fmt.Errorf("is %s, want %s", str, want[0])
	}
	return nil
}

func jsonSelect(v any, path string) (any, error) {
	path = strings.Trim(path, "/")
	if path == "" || path == "." {
		return v, nil
	}
	for _, seg := range strings.Split(path, "/") {
		switch x := v.(type) {
		case map[string]any:
			next, ok := x[seg]
			if !ok {
				return nil, fmt.Errorf("no field %q", seg)
			}
			v = next
		case []any:
			if name, val, ok := strings.Cut(seg, "="); ok {
				var found any
				n := 0
				for _, el := range x {
					if m, ok := el.(map[string]any); ok && m[name] == val {
						found = el
						n++
					}
				}
				if n != 1 {
					return nil, fmt.Errorf("%d elements with %s", n, seg)
				}
				v = found
				continue
			}
			i, err := strconv.Atoi(seg)
			if err != nil || i < 0 || i >= len(x) {
				return nil, fmt.Errorf("no element %q in an array of %d", seg, len(x))
			}
			v = x[i]
		default:
			return nil, fmt.Errorf("%q: not an object or array", seg)
		}
	}
	return v, nil
}

// waitfile FILE [ENVVAR]
//
// Waits (up to 20 s) until FILE exists and is not empty; with ENVVAR, sets
// that variable to its trimmed content.
func cmdWaitfile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) < 1 || len(args) > 2 {
		ts.Fatalf("usage: waitfile file [envvar]")
	}
	path := ts.MkAbs(args[0])
	deadline := time.Now().Add(20 * time.Second)
	for {
		b, err := os.ReadFile(path)
		if err == nil && len(b) > 0 {
			if len(args) == 2 {
				ts.Setenv(args[1], strings.TrimSpace(string(b)))
			}
			return
		}
		if time.Now().After(deadline) {
			ts.Fatalf("waitfile: %s did not appear", args[0])
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// sleep DURATION
func cmdSleep(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 1 {
		ts.Fatalf("usage: sleep duration")
	}
	d, err := time.ParseDuration(args[0])
	if err != nil {
		ts.Fatalf("sleep: %v", err)
	}
	time.Sleep(d)
}

// TestJSONCheck pins the script helper's own behaviour, so a broken helper
// cannot make the scripts pass vacuously.
func TestJSONCheck(t *testing.T) {
	var doc any
	if err := json.Unmarshal([]byte(`[{"key":"a","n":6,"m":{"x":"1,2"},"e":null},{"key":"b","n":1.5,"m":{}}]`), &doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		path, mode string
		want       []string
		ok         bool
	}{
		{"key=a/n", "", []string{"6"}, true},
		{"key=a/n", "", []string{"7"}, false},
		{"0/key", "", []string{"a"}, true},
		{"1/n", "", []string{"1.5"}, true},
		{"key=a/m", "", []string{`{"x":"1,2"}`}, true},
		{"key=a/m/x", "", []string{"1,2"}, true},
		{"key=a/e", "", []string{"null"}, true},
		{"key=b/m", "-len", []string{"0"}, true},
		{".", "-len", []string{"2"}, true},
		{".", "-len", []string{"3"}, false},
		{"key=c", "", nil, false},
		{"key=a/zz", "", nil, false},
		{"key=a/key", "-re", []string{"^a$"}, true},
		{"key=a/key", "-re", []string{"^b$"}, false},
		{"5", "", nil, false},
	} {
		err := jsonCheck(doc, c.path, c.mode, c.want)
		if (err == nil) != c.ok {
			t.Errorf("jsonCheck(%q, %q, %q) = %v, want ok=%v", c.path, c.mode, c.want, err, c.ok)
		}
	}
}
