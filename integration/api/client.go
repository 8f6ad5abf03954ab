package api

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strings"
	"time"

	"github.com/iriskvfs/iriskvfs/instructions"
	"github.com/iriskvfs/iriskvfs/store"
)

// Client is a Backend that talks to a Handler: the CLI uses it to reach a
// mount daemon through its admin socket.
type Client struct {
	HTTP *http.Client
	Base string // e.g. http://unix/api/sandboxes/local/kv-cache/
}

// NewSocketClient returns a client of the admin socket at path.
func NewSocketClient(path string) *Client {
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := net.Dialer{Timeout: 5 * time.Second}
			return d.DialContext(ctx, "unix", path)
		},
		DisableCompression: true,
		// A daemon that accepts but never answers (one the kernel could not
		// finish killing) must not hang the CLI for ever. The longest honest
		// wait is a large put's commit or an fsck of a big store.
		ResponseHeaderTimeout: 10 * time.Minute,
	}
	return &Client{HTTP: &http.Client{Transport: tr}, Base: "http://admin" + Prefix + "local/kv-cache/"}
}

func (c *Client) do(ctx context.Context, method, route string, q url.Values, body io.Reader) (*http.Response, error) {
	u := c.Base + route
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, method, u, body)
	if err != nil {
		return nil, err
	}
	resp, err := c.HTTP.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode >= 400 {
		defer resp.Body.Close()
		var env struct {
			Error *Error `json:"error"`
		}
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&env); err != nil || env.Error == nil {
			return nil, &Error{Status: resp.StatusCode, Code: "http", Message: fmt.Sprintf("%s %s: %s", method, route, resp.Status)}
		}
		env.Error.Status = resp.StatusCode
		return nil, env.Error
	}
	return resp, nil
}

func (c *Client) decode(ctx context.Context, method, route string, q url.Values, body io.Reader, v any) error {
	resp, err := c.do(ctx, method, route, q, body)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

func (c *Client) Put(ctx context.Context, scope, key string, body io.Reader, o PutOptions) (Entry, error) {
	q := url.Values{"scope": {scope}, "key": {key}}
	if o.TTL > 0 {
		q.Set("ttl", o.TTL.String())
	}
	if o.ContentType != "" {
		q.Set("content_type", o.ContentType)
	}
	names := make([]string, 0, len(o.Meta))
	for k := range o.Meta {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		q.Add("meta", k+"="+o.Meta[k])
	}
	var e Entry
	return e, c.decode(ctx, http.MethodPost, "value", q, body, &e)
}

func (c *Client) Get(ctx context.Context, scope, key string) (Entry, io.ReadCloser, error) {
	resp, err := c.do(ctx, http.MethodGet, "value", url.Values{"scope": {scope}, "key": {key}}, nil)
	if err != nil {
		return Entry{}, nil, err
	}
	var e Entry
	if h := resp.Header.Get(entryHeader); h != "" {
		_ = json.NewDecoder(strings.NewReader(h)).Decode(&e)
	}
	return e, resp.Body, nil
}

func (c *Client) List(ctx context.Context, scope string) ([]Entry, error) {
	var out struct {
		Keys []Entry `json:"keys"`
	}
	q := url.Values{}
	if scope != "" {
		q.Set("scope", scope)
	}
	return out.Keys, c.decode(ctx, http.MethodGet, "keys", q, nil, &out)
}

func (c *Client) Delete(ctx context.Context, scope, key string) error {
	var out map[string]any
	return c.decode(ctx, http.MethodDelete, "value", url.Values{"scope": {scope}, "key": {key}}, nil, &out)
}

func (c *Client) Stats(ctx context.Context) (Stats, error) {
	var st Stats
	return st, c.decode(ctx, http.MethodGet, "stats", nil, nil, &st)
}

func (c *Client) Prune(ctx context.Context) (store.PruneResult, error) {
	var r store.PruneResult
	return r, c.decode(ctx, http.MethodPost, "prune", nil, nil, &r)
}

func (c *Client) Clear(ctx context.Context, scope string) (int, error) {
	var out struct {
		Cleared int `json:"cleared"`
	}
	return out.Cleared, c.decode(ctx, http.MethodDelete, "clear-scope", url.Values{"scope": {scope}}, nil, &out)
}

func (c *Client) Fsck(ctx context.Context, repair bool) (*store.FsckReport, error) {
	var r store.FsckReport
	q := url.Values{}
	if repair {
		q.Set("repair", "true")
	}
	return &r, c.decode(ctx, http.MethodPost, "fsck", q, nil, &r)
}

func (c *Client) Seed(ctx context.Context, force bool) ([]instructions.Action, error) {
	var out struct {
		Actions []instructions.Action `json:"actions"`
	}
	q := url.Values{}
	if force {
		q.Set("force_refresh", "true")
	}
	return out.Actions, c.decode(ctx, http.MethodPost, "seed-instructions", q, nil, &out)
}
