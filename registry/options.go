package registry

import (
	"net/http"
	"runtime"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Option configures a Client. All defaults live in defaultOptions.
type Option func(*options)

type options struct {
	keychain         authn.Keychain
	hostTLS          func(host string) (HostTLS, error)
	platform         ocispec.Platform
	maxManifestSize  int64
	maxConfigSize    int64
	parallel         int
	maxSpans         int
	rangesPerRequest int
	mergeGap         int64
	retries          int
	backoff          time.Duration
	maxBackoff       time.Duration
	maxRetryAfter    time.Duration
	idleTimeout      time.Duration
	transport        http.RoundTripper
	userAgent        string
	chunkSize        int64
}

func defaultOptions() options {
	return options{
		keychain:         authn.NewMultiKeychain(), // anonymous
		platform:         ocispec.Platform{OS: runtime.GOOS, Architecture: runtime.GOARCH},
		maxManifestSize:  4 << 20,
		maxConfigSize:    16 << 20,
		parallel:         4,
		maxSpans:         1024,
		rangesPerRequest: 128,
		mergeGap:         1024,
		retries:          5,
		backoff:          200 * time.Millisecond,
		maxBackoff:       10 * time.Second,
		maxRetryAfter:    60 * time.Second,
		idleTimeout:      DefaultIdleTimeout,
		userAgent:        "kura",
		chunkSize:        16 << 20,
	}
}

// WithKeychain supplies credentials (e.g. auth.NewKeychain()). Default: anonymous.
func WithKeychain(k authn.Keychain) Option { return func(o *options) { o.keychain = k } }

// WithTLSVerify sets one rule for every registry, as podman's explicit --tls-verify does: false
// accepts any certificate and lets the client fall back to plain HTTP; true requires verified
// HTTPS, loopback and private addresses included. Without WithTLSVerify or WithHostTLS,
// certificates are verified against the system pool but loopback and private addresses may fall
// back to plain HTTP, as in go-containerregistry (a convenience for tests and embedders, not what
// the kura command does).
func WithTLSVerify(v bool) Option {
	return func(o *options) {
		o.hostTLS = func(string) (HostTLS, error) { return HostTLS{Insecure: !v}, nil }
	}
}

// WithHostTLS chooses, per registry host (host[:port] as in references), whether to verify
// certificates and allow plain HTTP, and which certs.d directory applies (see HostTLS). It is
// asked once per host; an error fails the requests to that host.
func WithHostTLS(f func(host string) (HostTLS, error)) Option {
	return func(o *options) { o.hostTLS = f }
}

// WithPlatform chooses the image of an index. Default: this host's OS and architecture, any variant.
func WithPlatform(p ocispec.Platform) Option { return func(o *options) { o.platform = p } }

// WithMaxManifestSize bounds manifests and indexes (default 4 MiB).
func WithMaxManifestSize(n int64) Option { return func(o *options) { o.maxManifestSize = n } }

// WithParallel bounds concurrent range requests per GetRanges call (default 4).
func WithParallel(n int) Option { return func(o *options) { o.parallel = max(1, n) } }

// WithMaxRanges caps the merged ranges per blob (default 1024): past it the smallest gaps are
// filled in.
func WithMaxRanges(n int) Option { return func(o *options) { o.maxSpans = max(1, n) } }

// WithRangesPerRequest caps the ranges in one request's Range header (default 128), which keeps
// the header under the 8 KiB many front ends accept.
func WithRangesPerRequest(n int) Option { return func(o *options) { o.rangesPerRequest = max(1, n) } }

// WithMergeGap merges ranges whose gap is at most n bytes (default 1024).
func WithMergeGap(n int64) Option { return func(o *options) { o.mergeGap = max(0, n) } }

// WithRetry sets the attempts per request (default 5) and the first backoff (default 200ms,
// doubling up to 10s).
func WithRetry(attempts int, backoff time.Duration) Option {
	return func(o *options) { o.retries, o.backoff = max(1, attempts), backoff }
}

// DefaultIdleTimeout is how long a connection may stall before it is aborted.
const DefaultIdleTimeout = 60 * time.Second

// WithIdleTimeout aborts a request whose connection delivers less than 1 KiB in d of waiting
// (default DefaultIdleTimeout; 0 disables): no answer, or a body that stalls or trickles. The
// request is retried or the body resumed (WithRetry), then the call fails with ErrIdle, so a
// stalled registry cannot hold a pull, and the store lock, forever.
func WithIdleTimeout(d time.Duration) Option { return func(o *options) { o.idleTimeout = max(0, d) } }

// WithTransport replaces the base transport (default: a clone of http.DefaultTransport).
func WithTransport(t http.RoundTripper) Option { return func(o *options) { o.transport = t } }

// WithUserAgent sets the User-Agent header.
func WithUserAgent(ua string) Option { return func(o *options) { o.userAgent = ua } }

// WithChunkSize sets the PATCH size of blob uploads (default 16 MiB).
func WithChunkSize(n int64) Option { return func(o *options) { o.chunkSize = max(1, n) } }
