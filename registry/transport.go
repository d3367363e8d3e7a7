package registry

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"
)

// callCounters collect one operation's share of the Client's Stats (e.g. one GetRanges call).
// They travel in the request context so retries inside the transport are counted too.
type callCounters struct {
	requests, bytesReceived, retries atomic.Int64
}

type callKey struct{}

func withCall(ctx context.Context, cc *callCounters) context.Context {
	return context.WithValue(ctx, callKey{}, cc)
}

func callOf(ctx context.Context) *callCounters {
	cc, _ := ctx.Value(callKey{}).(*callCounters)
	return cc
}

// countingTransport counts requests and response body bytes.
type countingTransport struct {
	inner http.RoundTripper
	stats *counters
}

func (t *countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	cc := callOf(req.Context())
	t.stats.requests.Add(1)
	if cc != nil {
		cc.requests.Add(1)
	}
	resp, err := t.inner.RoundTrip(req)
	if err != nil {
		return nil, err
	}
	resp.Body = &countingBody{ReadCloser: resp.Body, stats: t.stats, call: cc}
	return resp, nil
}

type countingBody struct {
	io.ReadCloser
	stats *counters
	call  *callCounters
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.stats.bytesReceived.Add(int64(n))
	if b.call != nil {
		b.call.bytesReceived.Add(int64(n))
	}
	return n, err
}

// retryTransport repeats requests that failed before a body arrived: network errors, 5xx
// (not 501, which means "not implemented" and is an answer), and 429 honouring Retry-After.
// Failures in the middle of a body are the reader's business (it resumes with a Range).
type retryTransport struct {
	inner http.RoundTripper
	opts  *options
	stats *counters
}

func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	ctx := req.Context()
	for attempt := 0; ; attempt++ {
		if attempt > 0 && req.Body != nil && req.Body != http.NoBody {
			if req.GetBody == nil {
				break // cannot resend; unreachable for our requests, which all have GetBody
			}
			body, err := req.GetBody()
			if err != nil {
				return nil, err
			}
			req.Body = body
		}
		resp, err := t.inner.RoundTrip(req)
		last := attempt+1 >= t.opts.retries
		wait := backoff(t.opts, attempt)
		switch {
		case err != nil:
			if last || ctx.Err() != nil {
				return nil, err
			}
		case resp.StatusCode == http.StatusTooManyRequests || resp.StatusCode >= 500 && resp.StatusCode != http.StatusNotImplemented:
			if last {
				return resp, nil
			}
			if ra, ok := retryAfter(resp.Header.Get("Retry-After")); ok {
				if ra > t.opts.maxRetryAfter {
					return resp, nil // the caller sees the 429 rather than us hanging for minutes
				}
				wait = ra
			}
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		default:
			return resp, nil
		}
		t.stats.retries.Add(1)
		if cc := callOf(ctx); cc != nil {
			cc.retries.Add(1)
		}
		if err := sleep(ctx, wait); err != nil {
			return nil, err
		}
	}
	return t.inner.RoundTrip(req)
}

// backoff doubles from opts.backoff up to opts.maxBackoff, with up to 25% jitter so parallel
// workers do not retry in lockstep.
func backoff(o *options, attempt int) time.Duration {
	d := o.backoff
	for i := 0; i < attempt && d < o.maxBackoff; i++ {
		d *= 2
	}
	d = min(d, o.maxBackoff)
	if d > 0 {
		d += time.Duration(rand.Int64N(int64(d)/4 + 1))
	}
	return d
}

// retryAfter parses delta-seconds or an HTTP date.
func retryAfter(v string) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	if s, err := strconv.ParseInt(v, 10, 64); err == nil && s >= 0 {
		if s > 1<<31 {
			s = 1 << 31
		}
		return time.Duration(s) * time.Second, true
	}
	if t, err := http.ParseTime(v); err == nil {
		return max(0, time.Until(t)), true
	}
	return 0, false
}

func sleep(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}

// isTransient reports body-read failures worth resuming: anything but cancellation.
func isTransient(ctx context.Context, err error) bool {
	return err != nil && ctx.Err() == nil && !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded)
}
