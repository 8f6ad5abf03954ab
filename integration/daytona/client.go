// Package daytona reaches a Daytona sandbox from the host, with Daytona's
// generated clients (api-client-go for the control plane, toolbox-api-client-go
// for the daemon inside the sandbox): get and start a sandbox, run commands,
// and read, write, list and delete its files. Init installs and mounts
// iriskvfs in a sandbox (`iriskvfs sandbox init`).
package daytona

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	apiclient "github.com/daytonaio/daytona/libs/api-client-go"
	toolbox "github.com/daytonaio/daytona/libs/toolbox-api-client-go"
)

// ClientVersion is the version of the generated clients; it is sent as
// X-Daytona-SDK-Version (the daemon answers JSON logs only to >= 0.167.0).
const ClientVersion = "0.190.0"

// DefaultAPIURL is Daytona's control plane.
const DefaultAPIURL = "https://app.daytona.io/api"

var (
	// ErrSandboxNotFound: the control plane does not know the sandbox.
	ErrSandboxNotFound = errors.New("sandbox not found")
	// ErrUnreachable: Daytona (the API or the sandbox's toolbox) could not be
	// reached, or answered with a gateway error.
	ErrUnreachable = errors.New("unreachable")
)

// Config says how to reach Daytona.
type Config struct {
	APIURL         string // DAYTONA_API_URL, with its /api suffix
	APIKey         string // DAYTONA_API_KEY
	JWTToken       string // DAYTONA_JWT_TOKEN (used without an API key)
	OrganizationID string // DAYTONA_ORGANIZATION_ID (required with a JWT)
	Target         string // DAYTONA_TARGET (informational: sandboxes exist already)
	// HTTPClient defaults to a client without an overall timeout: every call
	// carries its own context deadline.
	HTTPClient *http.Client
	// StartTimeout bounds the wait for a sandbox to start (default 60 s).
	StartTimeout time.Duration
}

// ConfigFromEnv reads Daytona's environment variables, as the SDK does.
func ConfigFromEnv() (Config, error) {
	cfg := Config{
		APIURL:         os.Getenv("DAYTONA_API_URL"),
		APIKey:         os.Getenv("DAYTONA_API_KEY"),
		JWTToken:       os.Getenv("DAYTONA_JWT_TOKEN"),
		OrganizationID: os.Getenv("DAYTONA_ORGANIZATION_ID"),
		Target:         os.Getenv("DAYTONA_TARGET"),
	}
	if cfg.APIURL == "" {
		cfg.APIURL = os.Getenv("DAYTONA_SERVER_URL")
	}
	return cfg, cfg.check()
}

func (cfg *Config) check() error {
	if cfg.APIURL == "" {
		cfg.APIURL = DefaultAPIURL
	}
	u, err := url.Parse(cfg.APIURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("DAYTONA_API_URL %q is not an http(s) URL", cfg.APIURL)
	}
	if cfg.APIKey == "" && cfg.JWTToken == "" {
		return errors.New("Daytona credentials not found: set DAYTONA_API_KEY, or both DAYTONA_JWT_TOKEN and DAYTONA_ORGANIZATION_ID")
	}
	if cfg.APIKey == "" && cfg.OrganizationID == "" {
		return errors.New("DAYTONA_ORGANIZATION_ID is required with DAYTONA_JWT_TOKEN")
	}
	return nil
}

func (cfg *Config) token() string {
	if cfg.APIKey != "" {
		return cfg.APIKey
	}
	return cfg.JWTToken
}

// Client talks to Daytona's control plane.
type Client struct {
	cfg Config
	api *apiclient.APIClient
}

// New returns a client; it does not contact Daytona.
func New(cfg Config) (*Client, error) {
	if err := cfg.check(); err != nil {
		return nil, err
	}
	if cfg.HTTPClient == nil {
		cfg.HTTPClient = &http.Client{}
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = 60 * time.Second
	}
	c := apiclient.NewConfiguration()
	c.Servers = apiclient.ServerConfigurations{{URL: strings.TrimRight(cfg.APIURL, "/")}}
	c.HTTPClient = cfg.HTTPClient
	c.UserAgent = "iriskvfs"
	c.AddDefaultHeader("X-Daytona-Source", "iriskvfs")
	c.AddDefaultHeader("X-Daytona-SDK-Version", ClientVersion)
	if cfg.APIKey == "" {
		c.AddDefaultHeader("X-Daytona-Organization-ID", cfg.OrganizationID)
	}
	return &Client{cfg: cfg, api: apiclient.NewAPIClient(c)}, nil
}

func (c *Client) authCtx(ctx context.Context) context.Context {
	return context.WithValue(ctx, apiclient.ContextAccessToken, c.cfg.token())
}

// Sandbox is what the control plane says about a sandbox.
type Sandbox struct {
	ID, Name, User, Target string
	State                  apiclient.SandboxState
	ErrorReason            string
	Recoverable            bool
	ToolboxProxyURL        string
}

func sandboxOf(s *apiclient.Sandbox) *Sandbox {
	return &Sandbox{
		ID: s.GetId(), Name: s.GetName(), User: s.GetUser(), Target: s.GetTarget(),
		State: s.GetState(), ErrorReason: s.GetErrorReason(), Recoverable: s.GetRecoverable(),
		ToolboxProxyURL: s.GetToolboxProxyUrl(),
	}
}

// GetSandbox returns the sandbox id (or name); ErrSandboxNotFound if unknown.
func (c *Client) GetSandbox(ctx context.Context, id string) (*Sandbox, error) {
	s, resp, err := c.api.SandboxAPI.GetSandbox(c.authCtx(ctx), id).Execute()
	if err != nil {
		return nil, classify("get sandbox "+id, resp, err, true)
	}
	return sandboxOf(s), nil
}

// EnsureStarted starts the sandbox if it is not running and waits until it
// is; started says whether it had to be started.
func (c *Client) EnsureStarted(ctx context.Context, id string) (sb *Sandbox, started bool, err error) {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.StartTimeout)
	defer cancel()
	sb, err = c.GetSandbox(ctx, id)
	if err != nil {
		return nil, false, err
	}
	delay := 100 * time.Millisecond
	begin := time.Now()
	for {
		switch sb.State {
		case apiclient.SANDBOXSTATE_STARTED:
			return sb, started, nil
		case apiclient.SANDBOXSTATE_ERROR, apiclient.SANDBOXSTATE_BUILD_FAILED:
			reason := sb.ErrorReason
			if reason == "" {
				reason = "no reason given"
			}
			return nil, started, fmt.Errorf("sandbox %s is in state %s: %s", id, sb.State, reason)
		case apiclient.SANDBOXSTATE_DESTROYED, apiclient.SANDBOXSTATE_DESTROYING:
			return nil, started, fmt.Errorf("sandbox %s is %s: %w", id, sb.State, ErrSandboxNotFound)
		case apiclient.SANDBOXSTATE_STOPPED, apiclient.SANDBOXSTATE_ARCHIVED, apiclient.SANDBOXSTATE_PAUSED:
			_, resp, err := c.api.SandboxAPI.StartSandbox(c.authCtx(ctx), id).Execute()
			if err != nil && (resp == nil || resp.StatusCode != http.StatusConflict) {
				return nil, started, classify("start sandbox "+id, resp, err, true)
			}
			started = true
		default: // a transition in progress: wait for it
		}
		select {
		case <-ctx.Done():
			return nil, started, fmt.Errorf("sandbox %s did not start within %s (state %s)", id, c.cfg.StartTimeout, sb.State)
		case <-time.After(delay):
		}
		if time.Since(begin) > 5*time.Second && delay < time.Second {
			delay = min(time.Duration(float64(delay)*1.1), time.Second)
		}
		if sb, err = c.GetSandbox(ctx, id); err != nil {
			return nil, started, err
		}
	}
}

// Toolbox returns the client of the daemon inside sb.
func (c *Client) Toolbox(sb *Sandbox) *Toolbox {
	cfg := toolbox.NewConfiguration()
	base := strings.TrimRight(sb.ToolboxProxyURL, "/") + "/" + url.PathEscape(sb.ID)
	cfg.Servers = toolbox.ServerConfigurations{{URL: base}}
	cfg.HTTPClient = c.cfg.HTTPClient
	cfg.UserAgent = "iriskvfs"
	// The toolbox client has no context authentication: default headers.
	cfg.AddDefaultHeader("Authorization", "Bearer "+c.cfg.token())
	cfg.AddDefaultHeader("X-Daytona-Source", "iriskvfs")
	cfg.AddDefaultHeader("X-Daytona-SDK-Version", ClientVersion)
	if c.cfg.APIKey == "" {
		cfg.AddDefaultHeader("X-Daytona-Organization-ID", c.cfg.OrganizationID)
	}
	return &Toolbox{sandbox: sb.ID, api: toolbox.NewAPIClient(cfg)}
}

// Error is a non-2xx answer from Daytona.
type Error struct {
	Op      string
	Status  int
	Message string
}

func (e *Error) Error() string {
	return fmt.Sprintf("daytona %s: %d %s", e.Op, e.Status, e.Message)
}

// Is makes a 404 match os.ErrNotExist, and a gateway error ErrUnreachable.
func (e *Error) Is(target error) bool {
	switch target {
	case os.ErrNotExist:
		return e.Status == http.StatusNotFound
	case ErrUnreachable:
		return e.Status == http.StatusBadGateway || e.Status == http.StatusServiceUnavailable || e.Status == http.StatusGatewayTimeout
	}
	return false
}

// classify turns what a generated client returned into an error: a 404 of
// the control plane (sandboxOp) is ErrSandboxNotFound, a transport failure
// ErrUnreachable, anything else an *Error with the server's message.
func classify(op string, resp *http.Response, err error, sandboxOp bool) error {
	if resp == nil {
		return fmt.Errorf("daytona %s: %w: %v", op, ErrUnreachable, err)
	}
	msg := ""
	var body []byte
	var ae *apiclient.GenericOpenAPIError
	var te *toolbox.GenericOpenAPIError
	switch {
	case errors.As(err, &ae):
		body = ae.Body()
	case errors.As(err, &te):
		body = te.Body()
	}
	msg = errorMessage(body)
	if msg == "" {
		msg = err.Error()
	}
	if sandboxOp && resp.StatusCode == http.StatusNotFound {
		return fmt.Errorf("daytona %s: %w (%s)", op, ErrSandboxNotFound, msg)
	}
	if resp.StatusCode < 300 { // a decoding failure
		return fmt.Errorf("daytona %s: %v", op, err)
	}
	return &Error{Op: op, Status: resp.StatusCode, Message: msg}
}
