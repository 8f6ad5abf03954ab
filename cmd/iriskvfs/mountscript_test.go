package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
	"github.com/rogpeppe/go-internal/txtar"
)

// mountedVariants are the scripts of testdata/script that run again with a
// mount daemon holding their store ($WORK/store), with the daemon's extra
// mount flags. Every admin command in them then goes through the daemon's
// admin socket (the store is locked: a command that fell back to opening
// it would fail), and must print exactly what it prints offline.
//
// Left out: lock (a second holder of the store; see
// testdata/mounted/lock.txtar), config (a --config per command, which a
// daemon cannot honour), fsck (it relies on the sweep at open; see
// testdata/mounted/fsck.txtar), usage (it never touches the store).
var mountedVariants = []struct{ script, flags string }{
	{"put_get.txtar", ""},
	{"errors.txtar", ""},
	{"ls.txtar", ""},
	{"stats.txtar", ""},
	{"rm_clear_prune.txtar", ""},
	{"flags.txtar", ""},
	{"quota.txtar", "--config $WORK/quota.yaml"},
}

const (
	mountedPrologue = `# Mounted variant (mountscript_test.go): a daemon holds $WORK/store, and
# every admin command goes through its admin socket.
exec iriskvfs --store $WORK/store mount --daemon $WORK/mnt%s
stdout '^mounted '
! stderr .

`
	// The daemon served it all: unmount finds it alive and it stops
	// cleanly (a dead daemon would give "cleared dead mount").
	mountedEpilogue = `
# (mounted variant) the daemon served all of it, and stops cleanly
exec iriskvfs unmount $WORK/mnt
stdout '^unmounted '
! grep 'DATA RACE|panic:' $WORK/store/daemon.log
`
)

// TestScriptMounted runs the mounted variants of testdata/script and the
// scripts of testdata/mounted, which mount and unmount by themselves.
func TestScriptMounted(t *testing.T) {
	requireFUSE(t)
	dir := t.TempDir()
	for _, v := range mountedVariants {
		a, err := txtar.ParseFile(filepath.Join("testdata", "script", v.script))
		if err != nil {
			t.Fatal(err)
		}
		flags := ""
		if v.flags != "" {
			flags = " " + v.flags
		}
		a.Comment = append([]byte(strings.Replace(mountedPrologue, "%s", flags, 1)), a.Comment...)
		a.Comment = append(a.Comment, mountedEpilogue...)
		name := "script_" + v.script
		if err := os.WriteFile(filepath.Join(dir, name), txtar.Format(a), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	own, err := filepath.Glob(filepath.Join("testdata", "mounted", "*.txtar"))
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range own {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, filepath.Base(p)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	testscript.Run(t, testscript.Params{
		Dir:                 dir,
		RequireExplicitExec: true,
		Setup: func(env *testscript.Env) error {
			// A script that fails half-way leaves its mount: stop it.
			work := env.WorkDir
			env.Defer(func() { detachMounts(work) })
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"exitcode": cmdExitcode,
			"errline":  cmdErrline,
			"json":     cmdJSON,
			"waitfile": cmdWaitfile,
			"sleep":    cmdSleep,
		},
	})
}
