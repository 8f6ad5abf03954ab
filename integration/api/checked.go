package api

import (
	"context"
	"fmt"
	"io"

	"github.com/iriskvfs/iriskvfs/quota"
	"github.com/iriskvfs/iriskvfs/store"
)

// checked is the server's guard in front of every backend: scope and key
// must be well-formed names before a backend sees them, so that no backend
// (a local store, a daemon's socket, or one that turns them into paths in a
// remote sandbox) can be handed "..", "a/b" or a NUL. Whether the scope
// exists is still the backend's to say.
type checked struct{ Backend }

// CheckScope refuses a scope that is not a well-formed scope name.
func CheckScope(op, scope string) error {
	if !quota.ValidScopeName(scope) {
		return &store.OpError{Op: op, Scope: scope, Err: fmt.Errorf("%w %q", store.ErrBadScope, scope)}
	}
	return nil
}

// CheckAddress refuses a malformed scope or key ("..", "a/b", NUL, reserved
// names): what any backend must check before a name becomes a path.
func CheckAddress(op, scope, key string) error {
	if err := CheckScope(op, scope); err != nil {
		return err
	}
	if err := store.ValidateKey(key); err != nil {
		return &store.OpError{Op: op, Scope: scope, Key: key, Err: err}
	}
	return nil
}

func (c checked) Put(ctx context.Context, scope, key string, body io.Reader, o PutOptions) (Entry, error) {
	if err := CheckAddress("put", scope, key); err != nil {
		return Entry{}, err
	}
	return c.Backend.Put(ctx, scope, key, body, o)
}

func (c checked) Get(ctx context.Context, scope, key string) (Entry, io.ReadCloser, error) {
	if err := CheckAddress("open", scope, key); err != nil {
		return Entry{}, nil, err
	}
	return c.Backend.Get(ctx, scope, key)
}

func (c checked) List(ctx context.Context, scope string) ([]Entry, error) {
	if scope != "" {
		if err := CheckScope("list", scope); err != nil {
			return nil, err
		}
	}
	return c.Backend.List(ctx, scope)
}

func (c checked) Delete(ctx context.Context, scope, key string) error {
	if err := CheckAddress("delete", scope, key); err != nil {
		return err
	}
	return c.Backend.Delete(ctx, scope, key)
}

func (c checked) Clear(ctx context.Context, scope string) (int, error) {
	if err := CheckScope("clear", scope); err != nil {
		return 0, err
	}
	return c.Backend.Clear(ctx, scope)
}
