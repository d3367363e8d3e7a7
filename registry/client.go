// Package registry owns talking to OCI registries: resolving references to manifests, verified
// blob downloads, and ranged blob reads that survive the ways real registries answer Range
// requests (see shared/spec/registries.md). Auth, retries and byte counting are
// http.RoundTripper wrappers; go-containerregistry's transport performs the auth handshake.
package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// Client talks to registries. It is safe for concurrent use; it caches one authenticated
// transport per repository and access (pull or push).
type Client struct {
	opts  options
	stats counters

	mu    sync.Mutex
	repos map[string]*repoClient
	hosts map[string]*hostTransport
}

// hostTransport is the base transport of one registry host: its TLS configuration (certs.d,
// verification) and whether plain HTTP may be tried. The token server and blob redirects of
// that registry go through it too, as in containers/image.
type hostTransport struct {
	rt        http.RoundTripper
	allowHTTP bool // try plain HTTP after HTTPS fails (insecure)
	httpsOnly bool // refuse plain HTTP to the registry host, loopback included
}

type repoClient struct {
	once   sync.Once
	err    error
	client *http.Client
	scheme string
	host   string // as used in URLs (index.docker.io for Docker Hub)
}

// New returns a Client.
func New(opts ...Option) *Client {
	o := defaultOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return &Client{opts: o, repos: map[string]*repoClient{}, hosts: map[string]*hostTransport{}}
}

// hostTransport builds (once) the base transport for a registry host.
func (c *Client) hostTransport(host string) (*hostTransport, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if ht, ok := c.hosts[host]; ok {
		return ht, nil
	}
	h := HostTLS{}
	strict := c.opts.hostTLS != nil
	if strict {
		var err error
		if h, err = c.opts.hostTLS(host); err != nil {
			return nil, fmt.Errorf("TLS settings for %s: %w", host, err)
		}
	}
	rt := c.opts.transport
	if rt == nil {
		cfg, err := tlsConfig(h)
		if err != nil {
			return nil, fmt.Errorf("TLS settings for %s: %w", host, err)
		}
		t := http.DefaultTransport.(*http.Transport).Clone()
		// Blobs must arrive byte for byte: no transparent gzip decoding.
		t.DisableCompression = true
		t.MaxIdleConnsPerHost = max(c.opts.parallel, 2)
		t.TLSClientConfig = cfg
		rt = t
	}
	ht := &hostTransport{rt: &idleTransport{inner: rt, idle: c.opts.idleTimeout}, allowHTTP: h.Insecure, httpsOnly: strict && !h.Insecure}
	c.hosts[host] = ht
	return ht, nil
}

// Stats are cumulative counters of a Client, for --json summaries.
type Stats struct {
	// Requests are HTTP requests to registries and redirect targets (retries included; the auth
	// handshake's ping and token requests are not).
	Requests int64 `json:"requests"`
	// BytesReceived are response body bytes read.
	BytesReceived int64 `json:"bytesReceived"`
	// BytesRequested are the bytes asked for by range requests.
	BytesRequested int64 `json:"bytesRequested"`
	// Retries are requests repeated after a transient failure (including resumed bodies).
	Retries int64 `json:"retries"`
	// RangesIgnored counts range requests answered 200 (the whole blob).
	RangesIgnored int64 `json:"rangesIgnored"`
	// RangeSplits counts halvings of the ranges per request after 400/416/501.
	RangeSplits int64 `json:"rangeSplits"`
	// RangesUnsupported counts blobs for which ranges were refused even one at a time.
	RangesUnsupported int64 `json:"rangesUnsupported"`
}

type counters struct {
	requests, bytesReceived, bytesRequested, retries, rangesIgnored, rangeSplits, rangesUnsupported atomic.Int64
}

func (c *counters) snapshot() Stats {
	return Stats{
		Requests: c.requests.Load(), BytesReceived: c.bytesReceived.Load(), BytesRequested: c.bytesRequested.Load(),
		Retries: c.retries.Load(), RangesIgnored: c.rangesIgnored.Load(), RangeSplits: c.rangeSplits.Load(),
		RangesUnsupported: c.rangesUnsupported.Load(),
	}
}

// Stats returns the counters so far.
func (c *Client) Stats() Stats { return c.stats.snapshot() }

// HTTPError is an unexpected registry answer. It wraps errdefs.ErrNotFound for 404 and
// errdefs.ErrPermission for 401/403, so errors.Is works.
type HTTPError struct {
	Method     string
	URL        string
	StatusCode int
	Status     string
	// Body is the start of the answer, for the message.
	Body string
}

func (e *HTTPError) Error() string {
	msg := fmt.Sprintf("%s %s: %s", e.Method, e.URL, e.Status)
	if e.Body != "" {
		msg += ": " + e.Body
	}
	return msg
}

// Temporary reports answers worth retrying later.
func (e *HTTPError) Temporary() bool {
	return e.StatusCode == http.StatusTooManyRequests || e.StatusCode >= 500 && e.StatusCode != http.StatusNotImplemented
}

func (e *HTTPError) Unwrap() error {
	switch e.StatusCode {
	case http.StatusNotFound:
		return errdefs.ErrNotFound
	case http.StatusUnauthorized, http.StatusForbidden:
		return errdefs.ErrPermission
	}
	return nil
}

// newHTTPError consumes and closes resp.
func newHTTPError(resp *http.Response) error {
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	u := resp.Request.URL
	redacted := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path} // no query: may hold signatures
	return &HTTPError{Method: resp.Request.Method, URL: redacted.String(), StatusCode: resp.StatusCode, Status: resp.Status,
		Body: strings.TrimSpace(strings.ToValidUTF8(string(body), "?"))}
}

// repo returns the authenticated client for a repository, doing the ping and token handshake
// once. push asks for push and pull scope.
func (c *Client) repo(ctx context.Context, repo imageref.Repository, push bool) (*repoClient, error) {
	key := repo.String()
	if push {
		key += "#push"
	}
	c.mu.Lock()
	rc, ok := c.repos[key]
	if !ok {
		rc = &repoClient{}
		c.repos[key] = rc
	}
	c.mu.Unlock()
	rc.once.Do(func() { rc.err = c.connect(ctx, rc, repo, push) })
	if rc.err != nil {
		// Let a later call try again (the failure may have been this ctx's cancellation).
		c.mu.Lock()
		if c.repos[key] == rc {
			delete(c.repos, key)
		}
		c.mu.Unlock()
		return nil, rc.err
	}
	return rc, nil
}

func (c *Client) connect(ctx context.Context, rc *repoClient, repo imageref.Repository, push bool) error {
	ht, err := c.hostTransport(repo.Domain)
	if err != nil {
		return err
	}
	var nopts []name.Option
	if ht.allowHTTP {
		nopts = append(nopts, name.Insecure)
	}
	nrepo, err := name.NewRepository(repo.String(), append(nopts, name.StrictValidation)...)
	if err != nil {
		return fmt.Errorf("repository %s: %v: %w", repo, err, errdefs.ErrInvalid)
	}
	base := ht.rt
	if ht.httpsOnly {
		base = &plainHTTPGuard{inner: base, host: nrepo.RegistryStr()}
	}
	authenticator, err := c.opts.keychain.Resolve(nrepo)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", repo, err)
	}
	scopes := []string{nrepo.Scope(transport.PullScope)}
	if push {
		scopes = []string{nrepo.Scope(transport.PushScope)}
	}
	ua := transport.NewUserAgent(base, c.opts.userAgent)
	authed, err := transport.NewWithContext(ctx, nrepo.Registry, authenticator, ua, scopes)
	if err != nil {
		return fmt.Errorf("authenticating to %s: %w", repo, classifyAuthErr(err))
	}
	rc.scheme = nrepo.Registry.Scheme()
	if ht.httpsOnly {
		rc.scheme = "https"
	}
	rc.host = nrepo.RegistryStr()
	rt := &retryTransport{inner: &countingTransport{inner: authed, stats: &c.stats}, opts: &c.opts, stats: &c.stats}
	rc.client = &http.Client{Transport: rt, CheckRedirect: checkRedirect}
	return nil
}

// classifyAuthErr maps ggcr's transport errors to our classes.
func classifyAuthErr(err error) error {
	var te *transport.Error
	if errors.As(err, &te) {
		switch te.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%w: %w", err, errdefs.ErrPermission)
		case http.StatusNotFound:
			return fmt.Errorf("%w: %w", err, errdefs.ErrNotFound)
		}
	}
	return err
}

// checkRedirect bounds redirect chains and refuses https→http downgrades. The Authorization
// header is never carried to another host: Go drops it across domains and ggcr's transport
// only adds it for the registry's own host.
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= 10 {
		return fmt.Errorf("stopped after 10 redirects")
	}
	if via[0].URL.Scheme == "https" && req.URL.Scheme != "https" {
		return fmt.Errorf("refusing redirect from https to %s: %w", req.URL.Redacted(), errdefs.ErrPermission)
	}
	return nil
}

func (rc *repoClient) url(repo imageref.Repository, kind, ref string) string {
	return fmt.Sprintf("%s://%s/v2/%s/%s/%s", rc.scheme, rc.host, repo.Path, kind, ref)
}
