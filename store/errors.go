package store

import (
	"errors"
	"fmt"
	"syscall"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/quota"
)

// The store's domain errors. Callers test them with errors.Is; the mount
// turns each into one errno (fs/errno.go), the CLI into one line and exit 1,
// the API into one status code.
var (
	ErrNotFound    = errors.New("no such key")
	ErrBadKey      = errors.New("invalid key")
	ErrReservedKey = fmt.Errorf("%w: names starting with '.' or '_' are reserved", ErrBadKey)
	ErrNameTooLong = errors.New("key longer than 255 bytes")
	ErrBadScope    = errors.New("no such scope")
	ErrBadArgument = errors.New("invalid argument")
	ErrOverQuota   = quota.ErrOverQuota
	ErrTooLarge    = quota.ErrTooLarge
	ErrIntegrity   = errors.New("fingerprint mismatch: stored value is corrupt")
	ErrNoSpace     = errors.New("no space left on the backing store")
	ErrReadOnly    = errors.New("the backing store is read-only")
	ErrLocked      = errors.New("store is in use by another process")
	ErrClosed      = errors.New("store is closed")
)

// ErrIndexDamaged reports an index file that cannot be read (an
// *index.DamagedError says which and why); fsck --repair rebuilds it,
// offline (RebuildIndex).
var ErrIndexDamaged = index.ErrDamaged

// OpError records the operation and the key an error happened to.
type OpError struct {
	Op    string
	Scope string
	Key   string
	Err   error
}

func (e *OpError) Error() string {
	where := e.Scope
	if e.Key != "" {
		where += "/" + e.Key
	}
	if where == "" {
		return e.Op + ": " + e.Err.Error()
	}
	return e.Op + " " + where + ": " + e.Err.Error()
}

func (e *OpError) Unwrap() error { return e.Err }

func opErr(op, scope, key string, err error) error {
	if err == nil {
		return nil
	}
	var oe *OpError
	if errors.As(err, &oe) {
		return err
	}
	if errors.Is(err, syscall.ENOSPC) && !errors.Is(err, ErrNoSpace) {
		err = fmt.Errorf("%w: %v", ErrNoSpace, err)
	}
	if errors.Is(err, syscall.EROFS) && !errors.Is(err, ErrReadOnly) {
		err = fmt.Errorf("%w: %v", ErrReadOnly, err)
	}
	return &OpError{Op: op, Scope: scope, Key: key, Err: err}
}
