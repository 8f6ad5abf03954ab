package fs

import (
	"errors"
	"log/slog"
	"os"
	"syscall"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/store"
)

// errnoTable is the one place where the store's domain errors become
// errnos. Order matters: the first match wins (ErrReservedKey wraps
// ErrBadKey, for instance, and both are EINVAL).
var errnoTable = []struct {
	err   error
	errno syscall.Errno
}{
	{store.ErrNotFound, syscall.ENOENT},
	{store.ErrNameTooLong, syscall.ENAMETOOLONG},
	{store.ErrBadKey, syscall.EINVAL},
	{store.ErrBadScope, syscall.ENOENT},
	{store.ErrBadArgument, syscall.EINVAL},
	{store.ErrOverQuota, syscall.EDQUOT},
	{store.ErrTooLarge, syscall.EFBIG},
	{store.ErrIntegrity, syscall.EIO},
	{store.ErrNoSpace, syscall.ENOSPC},
	{store.ErrReadOnly, syscall.EROFS},
	{store.ErrIndexDamaged, syscall.EIO},
	{store.ErrLocked, syscall.EBUSY},
	{store.ErrClosed, syscall.EIO},
	{index.ErrCorruptRecord, syscall.EIO},
	{os.ErrNotExist, syscall.ENOENT},
}

// toErrno maps an error from the store to the errno the caller sees. An
// error nobody anticipated is logged in full and reported as EIO, never as
// go-fuse's ENOSYS for unknown errors.
func toErrno(log *slog.Logger, err error) syscall.Errno {
	if err == nil {
		return 0
	}
	for _, m := range errnoTable {
		if errors.Is(err, m.err) {
			if m.errno == syscall.EIO {
				log.Error("returning EIO", "err", err)
			}
			return m.errno
		}
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno
	}
	log.Error("unexpected error, returning EIO", "err", err)
	return syscall.EIO
}
