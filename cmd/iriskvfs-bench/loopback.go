package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	gofs "github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
)

// roleEnv makes this program a helper instead of the benchmark: with
// "loopback" it serves go-fuse's loopback filesystem (arguments: the
// backing directory and the mount point) until it is unmounted or gets
// SIGINT/SIGTERM.
const roleEnv = "IRISKVFS_BENCH_ROLE"

// loopbackOptions are the options of go-fuse's own example/loopback
// (1 s entry and attribute timeouts, NullPermissions, FsName and Name for
// df -T), mounted directly as root as the iriskvfs daemon is. Everything
// else is go-fuse's default: READDIRPLUS, and FUSE passthrough for reads
// and writes when the kernel offers it (it does here, as root).
func loopbackOptions(backing string) *gofs.Options {
	sec := time.Second
	return &gofs.Options{
		AttrTimeout:     &sec,
		EntryTimeout:    &sec,
		NullPermissions: true,
		MountOptions: fuse.MountOptions{
			FsName:      backing,
			Name:        "loopback",
			DirectMount: os.Geteuid() == 0,
		},
	}
}

const loopbackOptionsText = "go-fuse's example/loopback options: Entry/AttrTimeout 1 s, NullPermissions, DirectMount as root; " +
	"go-fuse defaults otherwise (READDIRPLUS, passthrough when the kernel offers it)"

func loopbackMain(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "loopback: want BACKING MOUNTPOINT")
		return 2
	}
	root, err := gofs.NewLoopbackRoot(args[0])
	if err != nil {
		fmt.Fprintf(os.Stderr, "loopback: %v\n", err)
		return 1
	}
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	server, err := gofs.Mount(args[1], root, loopbackOptions(args[0]))
	if err != nil {
		fmt.Fprintf(os.Stderr, "loopback: mount %s: %v\n", args[1], err)
		return 1
	}
	go func() {
		for range sigs {
			if err := server.Unmount(); err != nil {
				fmt.Fprintf(os.Stderr, "loopback: unmount: %v\n", err)
			}
		}
	}()
	server.Wait()
	return 0
}
