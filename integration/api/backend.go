// Package api serves a cache over HTTP: the predecessor's REST routes
// (/api/sandboxes/{id}/kv-cache/...), used both by operators over TCP and by
// the CLI over the mount daemon's admin socket. A Backend is what the routes
// act on: a local store, or a client of another server.
package api

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/iriskvfs/iriskvfs/index"
	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/store"
)

// Backend is a cache the routes can act on.
type Backend interface {
	Put(ctx context.Context, scope, key string, body io.Reader, opts PutOptions) (Entry, error)
	// Get returns the entry and its verified bytes; the caller closes them.
	Get(ctx context.Context, scope, key string) (Entry, io.ReadCloser, error)
	// List returns the live entries of scope, or of every scope for "".
	List(ctx context.Context, scope string) ([]Entry, error)
	Delete(ctx context.Context, scope, key string) error
	Stats(ctx context.Context) (Stats, error)
	Prune(ctx context.Context) (store.PruneResult, error)
	Clear(ctx context.Context, scope string) (int, error)
	Fsck(ctx context.Context, repair bool) (*store.FsckReport, error)
	// Seed writes the canonical instruction sets that are missing, expired,
	// corrupt or outdated (all with force).
	Seed(ctx context.Context, force bool) ([]instructions.Action, error)
}

// Stats is the stats document: the store's figures and, where the
// instruction sets are tracked, their telemetry. It is what `stats --json`
// prints, the stats route returns and .stats holds.
type Stats struct {
	store.Stats
	Instructions *instructions.Telemetry `json:"instructions,omitempty"`
}

// PutOptions are the per-key settings a put may carry.
type PutOptions struct {
	TTL         time.Duration
	ContentType string
	Meta        map[string]string
}

// Entry is the wire form of an entry: the JSON of `ls --json` and of the
// keys route.
type Entry struct {
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

// EntryOf converts an index entry to its wire form.
func EntryOf(e *index.Entry) Entry {
	j := Entry{
		Scope: e.Scope, Key: e.Key, SizeBytes: e.Size, ContentType: e.ContentType,
		Fingerprint: hex.EncodeToString(e.Fingerprint[:]),
		CreatedAt:   e.CreatedAt.UTC(), ModifiedAt: e.ModTime.UTC(),
		TTLHours: e.TTL.Hours(), Metadata: e.Meta,
	}
	j.Mode = fmt.Sprintf("%04o", e.Mode)
	if !e.ExpiresAt.IsZero() {
		t := e.ExpiresAt.UTC()
		j.ExpiresAt = &t
	}
	if j.Metadata == nil {
		j.Metadata = map[string]string{}
	}
	return j
}

// Local is a Backend over a store in this process. Guard, when set, is the
// daemon's instruction guard, whose restorations the stats report.
type Local struct {
	Store *store.Store
	Guard *instructions.Guard
}

func (l Local) Put(_ context.Context, scope, key string, body io.Reader, o PutOptions) (Entry, error) {
	e, err := l.Store.Put(scope, key, body, store.PutOptions{TTL: o.TTL, ContentType: o.ContentType, Meta: o.Meta})
	if err != nil {
		return Entry{}, err
	}
	return EntryOf(&e), nil
}

func (l Local) Get(_ context.Context, scope, key string) (Entry, io.ReadCloser, error) {
	v, err := l.Store.Open(scope, key)
	if err != nil {
		return Entry{}, nil, err
	}
	return EntryOf(&v.Entry), valueReader{Reader: v.Reader(), Closer: v}, nil
}

type valueReader struct {
	io.Reader
	io.Closer
}

func (l Local) List(_ context.Context, scope string) ([]Entry, error) {
	scopes := []string{scope}
	if scope == "" {
		scopes = l.Store.Policy().Names()
	}
	out := []Entry{}
	for _, sc := range scopes {
		es, err := l.Store.List(sc)
		if err != nil {
			return nil, err
		}
		for i := range es {
			out = append(out, EntryOf(&es[i]))
		}
	}
	return out, nil
}

func (l Local) Delete(_ context.Context, scope, key string) error { return l.Store.Delete(scope, key) }

func (l Local) Stats(context.Context) (Stats, error) {
	st, err := l.Store.Stats()
	if err != nil {
		return Stats{}, err
	}
	out := Stats{Stats: st}
	if st.Reads != nil {
		t := instructions.TelemetryOf(&st, l.Guard)
		out.Instructions = &t
	}
	return out, nil
}

func (l Local) Prune(context.Context) (store.PruneResult, error) { return l.Store.Prune() }

func (l Local) Clear(_ context.Context, scope string) (int, error) { return l.Store.Clear(scope) }

func (l Local) Fsck(_ context.Context, repair bool) (*store.FsckReport, error) {
	return l.Store.Fsck(repair)
}

func (l Local) Seed(_ context.Context, force bool) ([]instructions.Action, error) {
	return instructions.Seed(l.Store, force)
}
