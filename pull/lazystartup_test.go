package pull

import (
	"context"
	"testing"
	"time"
)

// fakeClock drives fillActivity: each after() call is handed to the test, which fires it.
type fakeClock struct {
	t      time.Time
	timers chan fakeTimer
}

type fakeTimer struct {
	d  time.Duration
	ch chan time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Unix(1000, 0), timers: make(chan fakeTimer)}
}

func (c *fakeClock) now() time.Time { return c.t }

func (c *fakeClock) after(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.timers <- fakeTimer{d: d, ch: ch}
	return ch
}

// expect receives the waiter's next timer and checks its length.
func (c *fakeClock) expect(t *testing.T, want time.Duration) fakeTimer {
	t.Helper()
	tm := <-c.timers
	if tm.d != want {
		t.Fatalf("the start-up wait set a timer of %v, want %v", tm.d, want)
	}
	return tm
}

type waitResult struct {
	capped bool
	err    error
}

func startWait(a *fillActivity, w StartupWindow) chan waitResult {
	res := make(chan waitResult, 1)
	go func() {
		capped, err := a.waitQuiet(context.Background(), w)
		res <- waitResult{capped, err}
	}()
	return res
}

var testWindow = StartupWindow{Quiet: time.Second, First: 5 * time.Second, Cap: 30 * time.Second}

// The background fetch waits for the first fill up to First, through a fill in flight, and
// then until fills have been quiet for Quiet: it starts only once start-up looks over.
func TestStartupWindowWaitsForQuietFills(t *testing.T) {
	c := newFakeClock()
	a := newFillActivity(c.now, c.after)
	res := startWait(a, testWindow)
	c.expect(t, 5*time.Second) // no fill yet: wait First for one
	a.begin()
	c.expect(t, 30*time.Second) // a fill in flight: only its end (or the cap) ends the wait
	c.t = c.t.Add(2 * time.Second)
	a.end()
	tm := c.expect(t, time.Second) // quiet since the fill ended: Quiet more
	select {
	case r := <-res:
		t.Fatalf("the wait ended (%+v) before fills were quiet", r)
	default:
	}
	c.t = c.t.Add(time.Second)
	tm.ch <- c.t
	if r := <-res; r.capped || r.err != nil {
		t.Fatalf("the wait ended with %+v, want the end of a quiet start-up", r)
	}
}

// Without any fill the wait ends First after it began.
func TestStartupWindowNoFills(t *testing.T) {
	c := newFakeClock()
	a := newFillActivity(c.now, c.after)
	res := startWait(a, testWindow)
	tm := c.expect(t, 5*time.Second)
	c.t = c.t.Add(5 * time.Second)
	tm.ch <- c.t
	if r := <-res; r.capped || r.err != nil {
		t.Fatalf("the wait ended with %+v, want the end of the first-fill wait", r)
	}
}

// Fills that never stop do not hold the background fetch back past the cap.
func TestStartupWindowCapped(t *testing.T) {
	c := newFakeClock()
	a := newFillActivity(c.now, c.after)
	res := startWait(a, testWindow)
	c.expect(t, 5*time.Second)
	a.begin()
	tm := c.expect(t, 30*time.Second)
	c.t = c.t.Add(31 * time.Second)
	tm.ch <- c.t
	if r := <-res; !r.capped || r.err != nil {
		t.Fatalf("the wait ended with %+v, want capped", r)
	}
}

// A cancelled context ends the wait with its error.
func TestStartupWindowCancelled(t *testing.T) {
	c := newFakeClock()
	a := newFillActivity(c.now, c.after)
	ctx, cancel := context.WithCancel(context.Background())
	res := make(chan error, 1)
	go func() { _, err := a.waitQuiet(ctx, testWindow); res <- err }()
	c.expect(t, 5*time.Second)
	cancel()
	if err := <-res; err != context.Canceled {
		t.Fatalf("the wait ended with %v, want context.Canceled", err)
	}
}
