package progress

import (
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
	"time"

	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"
)

// NewTerminal returns a Reporter that draws one bar per unit of work, and a total below them,
// each with bytes, rate and ETA, redrawn in place. Call Finish when the work is over.
func NewTerminal(w io.Writer) Reporter {
	return newTerminal(time.Now, mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithRefreshRate(150*time.Millisecond))
}

// newTerminal takes its clock and mpb's options, so that a test draws frames when it asks.
func newTerminal(now func() time.Time, opts ...mpb.ContainerOption) *terminal {
	t := &terminal{p: mpb.New(append(opts, mpb.WithWidth(100))...), now: now}
	t.total = &termBar{t: t, c: counts{name: "total", start: now()}}
	t.total.bar = t.add(t.total, math.MaxInt) // the largest priority draws it last
	return t
}

// terminal keeps the counts under its own lock and never calls mpb while holding it: mpb's
// drawing goroutine calls back into the decorators, which take the lock.
type terminal struct {
	p     *mpb.Progress
	now   func() time.Time
	total *termBar

	mu   sync.Mutex
	bars []*termBar
	once sync.Once
}

type termBar struct {
	t   *terminal
	bar *mpb.Bar
	c   counts
}

func (t *terminal) Bar(name string) Bar {
	b := &termBar{t: t, c: counts{name: name, start: t.now()}}
	t.mu.Lock()
	t.bars = append(t.bars, b)
	n := len(t.bars)
	t.mu.Unlock()
	b.bar = t.add(b, n)
	return b
}

// add makes b's mpb bar: its name, the bar, then bytes, rate and ETA (or the final status).
func (t *terminal) add(b *termBar, priority int) *mpb.Bar {
	return t.p.New(0, mpb.BarStyle(), mpb.BarPriority(priority),
		mpb.PrependDecorators(decor.Name(b.c.name, decor.WC{C: decor.DindentRight | decor.DextraSpace})),
		mpb.AppendDecorators(decor.Any(func(decor.Statistics) string { return t.status(b) })))
}

// status is what follows b's bar: "12.0MiB / 81.2MiB 5.1MiB/s ETA 13s", or how it ended.
func (t *terminal) status(b *termBar) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	c := &b.c
	if c.finished && c.status != "" {
		return c.status
	}
	now := t.now()
	s := fmt.Sprintf("%s / %s", HumanBytes(c.done+c.skipped), HumanBytes(c.total))
	if r, ok := c.rate(now); ok {
		s += fmt.Sprintf(" %s/s", HumanBytes(int64(r)))
	}
	if c.finished {
		return s + " done"
	}
	if eta, ok := c.eta(now); ok {
		s += " ETA " + eta.String()
	}
	return s
}

// update changes b's counts and the total's, then tells mpb the bar's new total and progress.
func (b *termBar) update(total, done, skipped int64) {
	t := b.t
	t.mu.Lock()
	b.c.total += total
	b.c.done += done
	b.c.skipped += skipped
	t.total.c.total += total
	t.total.c.done += done
	t.total.c.skipped += skipped
	barTotal, allTotal := b.c.total, t.total.c.total
	t.mu.Unlock()
	if total != 0 {
		b.bar.SetTotal(barTotal, false)
		t.total.bar.SetTotal(allTotal, false)
	}
	if n := done + skipped; n != 0 {
		b.bar.IncrInt64(n)
		t.total.bar.IncrInt64(n)
	}
}

func (b *termBar) SetTotal(n int64) {
	b.t.mu.Lock()
	old := b.c.total
	b.t.mu.Unlock()
	b.update(n-old, 0, 0)
}
func (b *termBar) Add(n int64)  { b.update(0, n, 0) }
func (b *termBar) Skip(n int64) { b.update(0, 0, n) }

func (b *termBar) Done(status string) {
	b.t.mu.Lock()
	if b.c.finished {
		b.t.mu.Unlock()
		return
	}
	b.c.finished, b.c.status, b.c.end = true, status, b.t.now()
	b.t.mu.Unlock()
	if strings.HasPrefix(status, "failed:") {
		b.bar.Abort(false)
		return
	}
	b.bar.SetTotal(-1, true)
}

// finish ends every bar still going (as it stands), completes the total and waits for mpb's
// last frame.
func (t *terminal) finish() {
	t.once.Do(func() {
		t.mu.Lock()
		bars := append([]*termBar(nil), t.bars...)
		t.mu.Unlock()
		for _, b := range bars {
			b.bar.Abort(false)
		}
		t.total.Done("")
		t.p.Wait()
	})
}
