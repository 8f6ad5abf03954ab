package index

import (
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"
)

// ErrDamaged reports an index file that cannot be read as the database it
// should be: unreadable meta pages, a truncated file, a corrupt page. The
// entries it held can only be rebuilt offline (fsck --repair).
var ErrDamaged = errors.New("index file is damaged")

// DamagedError is ErrDamaged with the file and what was wrong with it.
type DamagedError struct {
	Path   string
	Reason string
}

func (e *DamagedError) Error() string {
	return fmt.Sprintf("index %s is damaged (%s)", e.Path, e.Reason)
}

func (e *DamagedError) Is(target error) bool { return target == ErrDamaged }

// faultError is what the runtime panics with on a memory fault at a real
// address while SetPanicOnFault is on: a read of a page of the memory map
// past the end of a truncated file (SIGBUS).
type faultError interface {
	error
	Addr() uintptr
}

// guard runs fn, which uses the bbolt database at path, and turns what
// bbolt does on a damaged file into a *DamagedError: bbolt panics on pages
// it cannot make sense of, and a read of a mapped page the file no longer
// has faults (which SetPanicOnFault turns into a panic for this goroutine).
// A panic anywhere else is a bug, not damage, and goes on panicking.
func guard(path string, fn func() error) (err error) {
	old := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(old)
		r := recover()
		if r == nil {
			return
		}
		if _, fault := r.(faultError); !fault && !panickedInBolt() {
			panic(r)
		}
		err = &DamagedError{Path: path, Reason: firstLine(fmt.Sprint(r))}
	}()
	return fn()
}

// panickedInBolt reports, from a deferred function of a panicking
// goroutine, whether the panic was raised in bbolt's code.
func panickedInBolt() bool {
	pc := make([]uintptr, 64)
	n := runtime.Callers(2, pc)
	frames := runtime.CallersFrames(pc[:n])
	panicking := false
	for {
		f, more := frames.Next()
		switch {
		case f.Function == "runtime.gopanic" || f.Function == "runtime.sigpanic":
			panicking = true
		case panicking && !strings.HasPrefix(f.Function, "runtime."):
			return strings.HasPrefix(f.Function, "go.etcd.io/bbolt")
		}
		if !more {
			return false
		}
	}
}

func firstLine(s string) string {
	s, _, _ = strings.Cut(s, "\n")
	return s
}
