package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/iriskvfs/iriskvfs/quota"
)

// Prefix is the root of the per-sandbox routes.
const Prefix = "/api/sandboxes/"

// Resolver finds the backend of a sandbox id ("local" for this machine).
// It returns an *Error with status 404 for an unknown id.
type Resolver func(ctx context.Context, id string) (Backend, error)

// Handler serves the routes.
type Handler struct {
	Resolve Resolver
	Log     *slog.Logger
	// MaxBody bounds a POSTed value (0: unbounded, for the admin socket
	// whose writer is the store's owner).
	MaxBody int64
}

// LocalResolver serves only id "local", from b.
func LocalResolver(b Backend) Resolver {
	return func(_ context.Context, id string) (Backend, error) {
		if id != "local" {
			return nil, &Error{Status: http.StatusNotFound, Code: "unknown_sandbox", Message: fmt.Sprintf("unknown sandbox %q (this server serves \"local\")", id)}
		}
		return b, nil
	}
}

func (h *Handler) log() *slog.Logger {
	if h.Log == nil {
		return slog.New(slog.DiscardHandler)
	}
	return h.Log
}

// ServeHTTP routes /api/sandboxes/{id}/kv-cache/{route}.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, Prefix)
	id, route, ok2 := strings.Cut(rest, "/kv-cache/")
	if !ok || !ok2 || id == "" || strings.Contains(id, "/") {
		writeError(w, &Error{Status: http.StatusNotFound, Code: "no_route", Message: "no such route: " + r.URL.Path})
		return
	}
	b, err := h.Resolve(r.Context(), id)
	if err != nil {
		writeError(w, ErrorOf(err))
		return
	}
	q := r.URL.Query()
	type call struct{ method, name string }
	switch (call{r.Method, route}) {
	case call{http.MethodGet, "stats"}:
		h.respond(w, http.StatusOK)(b.Stats(r.Context()))
	case call{http.MethodGet, "keys"}:
		entries, err := b.List(r.Context(), q.Get("scope"))
		h.respond(w, http.StatusOK)(map[string]any{"scope": q.Get("scope"), "keys": entries}, err)
	case call{http.MethodGet, "value"}:
		h.getValue(w, r, b)
	case call{http.MethodPost, "value"}:
		h.putValue(w, r, b)
	case call{http.MethodDelete, "value"}:
		err := b.Delete(r.Context(), q.Get("scope"), q.Get("key"))
		h.respond(w, http.StatusOK)(map[string]any{"deleted": true, "scope": q.Get("scope"), "key": q.Get("key")}, err)
	case call{http.MethodPost, "prune"}:
		h.respond(w, http.StatusOK)(b.Prune(r.Context()))
	case call{http.MethodDelete, "clear-scope"}:
		n, err := b.Clear(r.Context(), q.Get("scope"))
		h.respond(w, http.StatusOK)(map[string]any{"scope": q.Get("scope"), "cleared": n}, err)
	case call{http.MethodPost, "fsck"}:
		h.respond(w, http.StatusOK)(b.Fsck(r.Context(), q.Get("repair") == "true"))
	case call{http.MethodPost, "seed-instructions"}:
		actions, err := b.Seed(r.Context(), q.Get("force_refresh") == "true")
		h.respond(w, http.StatusOK)(map[string]any{"actions": actions}, err)
	default:
		switch route {
		case "stats", "keys", "value", "prune", "clear-scope", "fsck", "seed-instructions":
			writeError(w, &Error{Status: http.StatusMethodNotAllowed, Code: "method_not_allowed", Message: r.Method + " is not allowed on " + route})
		default:
			writeError(w, &Error{Status: http.StatusNotFound, Code: "no_route", Message: "no such route: " + r.URL.Path})
		}
	}
}

// respond returns a function writing v as JSON with status, or err.
func (h *Handler) respond(w http.ResponseWriter, status int) func(v any, err error) {
	return func(v any, err error) {
		if err != nil {
			e := ErrorOf(err)
			if e.Status >= 500 {
				h.log().Error("request failed", "code", e.Code, "err", err)
			}
			writeError(w, e)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(v)
	}
}

func (h *Handler) getValue(w http.ResponseWriter, r *http.Request, b Backend) {
	q := r.URL.Query()
	e, body, err := b.Get(r.Context(), q.Get("scope"), q.Get("key"))
	if err != nil {
		h.respond(w, 0)(nil, err)
		return
	}
	defer body.Close()
	hd := w.Header()
	hd.Set("Content-Type", e.ContentType)
	hd.Set("Content-Length", strconv.FormatInt(e.SizeBytes, 10))
	hd.Set("ETag", `"`+e.Fingerprint+`"`)
	hd.Set("X-Content-Type-Options", "nosniff")
	if meta, err := json.Marshal(e); err == nil {
		hd.Set(entryHeader, string(meta))
	}
	w.WriteHeader(http.StatusOK)
	_, _ = io.Copy(w, body)
}

// entryHeader carries the whole entry as JSON beside a value, so that the
// client needs no second request.
const entryHeader = "X-Iriskvfs-Entry"

func (h *Handler) putValue(w http.ResponseWriter, r *http.Request, b Backend) {
	q := r.URL.Query()
	var o PutOptions
	if v := q.Get("ttl"); v != "" {
		d, err := quota.ParseTTL(v)
		if err != nil || d <= 0 {
			writeError(w, &Error{Status: http.StatusBadRequest, Code: "bad_argument", Message: fmt.Sprintf("ttl %q: want a positive duration such as 6h", v)})
			return
		}
		o.TTL = d
	}
	if v := q.Get("ttl_hours"); v != "" {
		f, err := strconv.ParseFloat(v, 64)
		if err != nil || f <= 0 || f > 100*365*24 {
			writeError(w, &Error{Status: http.StatusBadRequest, Code: "bad_argument", Message: fmt.Sprintf("ttl_hours %q: want a positive number of hours", v)})
			return
		}
		o.TTL = time.Duration(f * float64(time.Hour))
	}
	o.ContentType = q.Get("content_type")
	for _, kv := range q["meta"] {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			writeError(w, &Error{Status: http.StatusBadRequest, Code: "bad_argument", Message: fmt.Sprintf("meta %q: want NAME=VALUE", kv)})
			return
		}
		if o.Meta == nil {
			o.Meta = map[string]string{}
		}
		o.Meta[k] = v
	}
	var body io.Reader = r.Body
	if h.MaxBody > 0 {
		body = http.MaxBytesReader(w, r.Body, h.MaxBody)
	}
	e, err := b.Put(r.Context(), q.Get("scope"), q.Get("key"), body, o)
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		err = &Error{Status: http.StatusRequestEntityTooLarge, Code: "body_too_large", Message: fmt.Sprintf("body larger than %d bytes", h.MaxBody)}
	}
	h.respond(w, http.StatusCreated)(e, err)
}
