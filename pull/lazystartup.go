package pull

import (
	"context"
	"sync"
	"time"
)

// The start-up window of a lazy pull: the background fetch of the rest of the image waits while
// a container starts, so that its on-demand fills have the network to themselves and the bytes
// fetched before it answers are those of the files it reads. It starts once on-demand fills
// have been quiet for StartupQuiet (none in flight), or, if none came, StartupFirst after the
// image became mountable; never later than StartupCap.
const (
	DefaultStartupQuiet = 1500 * time.Millisecond
	DefaultStartupFirst = 5 * time.Second
	DefaultStartupCap   = 30 * time.Second
)

// StartupWindow bounds the wait described above; the zero value means the defaults.
type StartupWindow struct {
	Quiet, First, Cap time.Duration
}

func (w StartupWindow) withDefaults() StartupWindow {
	if w.Quiet <= 0 {
		w.Quiet = DefaultStartupQuiet
	}
	if w.First <= 0 {
		w.First = DefaultStartupFirst
	}
	if w.Cap <= 0 {
		w.Cap = DefaultStartupCap
	}
	return w
}

// WithStartupWindow sets how long the background fetch of a lazy pull waits for the start-up
// reads (see DefaultStartupQuiet). WithBackgroundHeld overrides it.
func WithStartupWindow(w StartupWindow) Option { return func(o *options) { o.startup = w } }

// fillActivity tracks the on-demand fills of one served pull: how many are in flight and when
// the last one ended. now and after are the clock (tests give a fake one).
type fillActivity struct {
	now   func() time.Time
	after func(time.Duration) <-chan time.Time

	mu       sync.Mutex
	inflight int
	fills    int
	last     time.Time     // end of the last fill, or the start of the window
	changed  chan struct{} // closed and replaced at each begin and end
}

func newFillActivity(now func() time.Time, after func(time.Duration) <-chan time.Time) *fillActivity {
	return &fillActivity{now: now, after: after, last: now(), changed: make(chan struct{})}
}

func (a *fillActivity) begin() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inflight++
	a.fills++
	a.signal()
}

func (a *fillActivity) end() {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.inflight--
	a.last = a.now()
	a.signal()
}

func (a *fillActivity) signal() {
	close(a.changed)
	a.changed = make(chan struct{})
}

// waitIdle returns once no on-demand fill is in flight, or when ctx ends: the background
// fetch's batches wait for it (see bulkFetcher).
func (a *fillActivity) waitIdle(ctx context.Context) error {
	for {
		a.mu.Lock()
		inflight, changed := a.inflight, a.changed
		a.mu.Unlock()
		if inflight == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-changed:
		}
	}
}

// waitQuiet returns once start-up looks over (see StartupWindow), or when ctx ends. It tells
// whether the cap cut the wait short.
func (a *fillActivity) waitQuiet(ctx context.Context, w StartupWindow) (capped bool, err error) {
	w = w.withDefaults()
	a.mu.Lock()
	deadline := a.last.Add(w.Cap)
	a.mu.Unlock()
	for {
		a.mu.Lock()
		now, changed := a.now(), a.changed
		wait := w.Quiet
		if a.fills == 0 {
			wait = w.First
		}
		left := a.last.Add(wait).Sub(now)
		if a.inflight > 0 {
			left = w.Cap // only a change (the fill's end) or the cap ends this wait
		}
		a.mu.Unlock()
		if left <= 0 {
			return false, nil
		}
		if capLeft := deadline.Sub(now); capLeft <= 0 {
			return true, nil
		} else if capLeft < left {
			left = capLeft
		}
		select {
		case <-ctx.Done():
			return false, ctx.Err()
		case <-changed:
		case <-a.after(left):
		}
	}
}
