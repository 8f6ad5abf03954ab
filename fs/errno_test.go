package fs

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"

	"github.com/iriskvfs/iriskvfs/store"
)

// TestToErrno pins the one table that turns store errors into errnos: every
// domain error, bare, wrapped in *store.OpError and wrapped with %w, and the
// fallbacks (a raw errno passes through; anything unknown is EIO, never
// go-fuse's ENOSYS).
func TestToErrno(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	cases := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"ErrNotFound", store.ErrNotFound, syscall.ENOENT},
		{"ErrNameTooLong", store.ErrNameTooLong, syscall.ENAMETOOLONG},
		{"ErrBadKey", store.ErrBadKey, syscall.EINVAL},
		{"ErrReservedKey", store.ErrReservedKey, syscall.EINVAL},
		{"ErrBadScope", store.ErrBadScope, syscall.ENOENT},
		{"ErrBadArgument", store.ErrBadArgument, syscall.EINVAL},
		{"ErrOverQuota", store.ErrOverQuota, syscall.EDQUOT},
		{"ErrTooLarge", store.ErrTooLarge, syscall.EFBIG},
		{"ErrIntegrity", store.ErrIntegrity, syscall.EIO},
		{"ErrNoSpace", store.ErrNoSpace, syscall.ENOSPC},
		{"ErrReadOnly", store.ErrReadOnly, syscall.EROFS},
		{"ErrIndexDamaged", store.ErrIndexDamaged, syscall.EIO},
		{"ErrLocked", store.ErrLocked, syscall.EBUSY},
		{"ErrClosed", store.ErrClosed, syscall.EIO},
	}
	for _, c := range cases {
		forms := []struct {
			how string
			err error
		}{
			{"bare", c.err},
			{"OpError", &store.OpError{Op: "put", Scope: "task", Key: "k", Err: c.err}},
			{"fmt %w", fmt.Errorf("context: %w", c.err)},
			{"OpError of %w", &store.OpError{Op: "open", Scope: "task", Key: "k", Err: fmt.Errorf("%w (why)", c.err)}},
			{"%w of OpError", fmt.Errorf("outer: %w", &store.OpError{Op: "rm", Scope: "task", Err: c.err})},
		}
		for _, f := range forms {
			if got := toErrno(log, f.err); got != c.want {
				t.Errorf("%s (%s): got %v (%s), want %v (%s)", c.name, f.how, got, errnoName(got), c.want, errnoName(c.want))
			}
		}
	}

	// The store turns a full backing disk into ErrNoSpace, but a raw
	// ENOSPC must give ENOSPC too.
	if got := toErrno(log, &os.PathError{Op: "write", Path: "/x", Err: syscall.ENOSPC}); got != syscall.ENOSPC {
		t.Errorf("PathError{ENOSPC}: got %v, want ENOSPC", got)
	}

	others := []struct {
		name string
		err  error
		want syscall.Errno
	}{
		{"nil", nil, 0},
		{"raw errno", syscall.EXDEV, syscall.EXDEV},
		{"raw errno EACCES", syscall.EACCES, syscall.EACCES},
		{"wrapped errno", fmt.Errorf("op: %w", syscall.EROFS), syscall.EROFS},
		{"PathError errno", &os.PathError{Op: "open", Path: "/x", Err: syscall.EMFILE}, syscall.EMFILE},
		{"os.ErrNotExist", os.ErrNotExist, syscall.ENOENT},
		{"unknown", errors.New("something nobody anticipated"), syscall.EIO},
		{"wrapped unknown", &store.OpError{Op: "put", Scope: "task", Key: "k", Err: errors.New("boom")}, syscall.EIO},
	}
	for _, c := range others {
		got := toErrno(log, c.err)
		if got != c.want {
			t.Errorf("%s: got %v (%s), want %v (%s)", c.name, got, errnoName(got), c.want, errnoName(c.want))
		}
		if c.err != nil && got == syscall.ENOSYS {
			t.Errorf("%s: ENOSYS leaked", c.name)
		}
	}
}

// TestErrnoTableCoversStoreErrors: every error in the table is matched by
// its own entry (an earlier entry does not shadow it with another errno).
func TestErrnoTableCoversStoreErrors(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	for _, m := range errnoTable {
		if got := toErrno(log, m.err); got != m.errno {
			t.Errorf("table entry %v: toErrno gives %v, the entry says %v (shadowed by an earlier entry)", m.err, got, m.errno)
		}
	}
}

func TestUnescapeMountinfo(t *testing.T) {
	for in, want := range map[string]string{
		`/mnt/plain`:               "/mnt/plain",
		`/mnt/with\040space`:       "/mnt/with space",
		`/a\011tab\012nl\134slash`: "/a\ttab\nnl\\slash",
		`/trailing\04`:             `/trailing\04`,
	} {
		if got := unescapeMountinfo(in); got != want {
			t.Errorf("unescapeMountinfo(%q) = %q, want %q", in, got, want)
		}
	}
}
