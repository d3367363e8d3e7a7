package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync/atomic"
	"time"
)

// ErrIdle: a connection delivered less than idleMinBytes while Kura waited on it for the idle
// timeout (WithIdleTimeout), and was aborted. It is transient: requests are retried and bodies
// resumed, up to the retry limit.
var ErrIdle = errors.New("connection idle")

// idleMinBytes is what a connection must deliver per idle timeout of waiting: less is a stall
// (a registry trickling a byte a second holds a pull, and the store lock, for days).
const idleMinBytes = 1024

// idleTransport aborts requests whose connection stalls: no answer within the idle timeout, or
// a body that delivers less than idleMinBytes over the idle timeout of time spent waiting in
// Read. Only waiting counts, not the time the caller spends between reads (writing, hashing):
// a slow consumer is not a stalled registry.
type idleTransport struct {
	inner http.RoundTripper
	idle  time.Duration
}

func (t *idleTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	if t.idle <= 0 {
		return t.inner.RoundTrip(req)
	}
	ctx, cancel := context.WithCancel(req.Context())
	w := &watchdog{idle: t.idle, cancel: cancel, url: req.URL.Redacted()}
	w.timer = time.AfterFunc(t.idle, w.fire)
	out := req.WithContext(ctx)
	if req.Body != nil && req.Body != http.NoBody {
		out.Body = &sendingBody{ReadCloser: req.Body, w: w}
	}
	resp, err := t.inner.RoundTrip(out)
	w.timer.Stop()
	if err != nil {
		cancel()
		if w.fired.Load() {
			return nil, w.err("waiting for an answer")
		}
		return nil, err
	}
	resp.Body = &idleBody{ReadCloser: resp.Body, w: w}
	return resp, nil
}

// watchdog cancels one request when its timer fires.
type watchdog struct {
	idle   time.Duration
	cancel context.CancelFunc
	url    string
	timer  *time.Timer
	fired  atomic.Bool
}

func (w *watchdog) fire() {
	w.fired.Store(true)
	w.cancel()
}

func (w *watchdog) err(doing string) error {
	return fmt.Errorf("%s from %s: %w (less than %d bytes in %s; see --idle-timeout)", doing, w.url, ErrIdle, idleMinBytes, w.idle)
}

// sendingBody is a request body under a watchdog: while it is being sent, each read (the
// transport takes more only as the connection accepts it) restarts the timer, so a long upload
// is not taken for a registry that does not answer.
type sendingBody struct {
	io.ReadCloser
	w *watchdog
}

func (b *sendingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.w.timer.Reset(b.w.idle)
	}
	return n, err
}

// idleBody is a response body under a watchdog: the timer runs while a Read waits.
type idleBody struct {
	io.ReadCloser
	w      *watchdog
	waited time.Duration // in Read, this window
	got    int64         // bytes, this window
}

func (b *idleBody) Read(p []byte) (int, error) {
	if b.w.fired.Load() {
		return 0, b.w.err("reading")
	}
	start := time.Now()
	b.w.timer.Reset(b.w.idle)
	n, err := b.ReadCloser.Read(p)
	b.w.timer.Stop()
	if b.w.fired.Load() {
		return n, b.w.err("reading")
	}
	b.waited += time.Since(start)
	b.got += int64(n)
	if b.waited >= b.w.idle {
		if b.got < idleMinBytes && err == nil {
			b.w.fire()
			return n, b.w.err("reading")
		}
		b.waited, b.got = 0, 0
	}
	return n, err
}

func (b *idleBody) Close() error {
	err := b.ReadCloser.Close()
	b.w.timer.Stop()
	b.w.cancel()
	return err
}
