// Package progress reports the progress of long operations (pulls, pushes, conversions): bars
// with rate and ETA on a terminal (drawn by github.com/vbauerster/mpb, as podman's are), plain
// lines in logs, nothing at all by default.
package progress

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Bar follows one unit of work, such as one layer.
type Bar interface {
	// SetTotal sets the number of bytes the work will cover.
	SetTotal(n int64)
	// Add counts n more bytes done.
	Add(n int64)
	// Skip counts n bytes that were not transferred because they were found locally.
	Skip(n int64)
	// Done ends the bar with a final status (an empty string means success).
	Done(status string)
}

// Reporter makes bars.
type Reporter interface {
	Bar(name string) Bar
}

// Nop is a Reporter that shows nothing.
var Nop Reporter = nopReporter{}

type nopReporter struct{}
type nopBar struct{}

func (nopReporter) Bar(string) Bar { return nopBar{} }
func (nopBar) SetTotal(int64)      {}
func (nopBar) Add(int64)           {}
func (nopBar) Skip(int64)          {}
func (nopBar) Done(string)         {}

// Auto returns terminal bars when f is a terminal with a width and plain lines otherwise (a
// pseudo-terminal nobody sized, as script(1) makes without a terminal of its own, has none, and
// bars drawn in zero columns would show nothing).
func Auto(f *os.File) Reporter {
	if ws, err := unix.IoctlGetWinsize(int(f.Fd()), unix.TIOCGWINSZ); err == nil && ws.Col > 0 {
		return NewTerminal(f)
	}
	return NewPlain(f)
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// Finish draws r's last frame and stops it; a bar not yet done is abandoned as it stands. Call
// it once, when the operation that used r is over, before printing anything else to r's writer.
// Reporters that draw nothing after Done (Nop, plain lines) need nothing and ignore it.
func Finish(r Reporter) {
	if f, ok := r.(interface{ finish() }); ok {
		f.finish()
	}
}

// counts is the state every bar keeps.
type counts struct {
	name                 string
	total, done, skipped int64
	status               string
	finished             bool
	start, end           time.Time
}

// Line renders the state the way podman and skopeo do, with the rate of the bytes transferred:
// "done 81.2MiB / 81.2MiB (skipped: 79.4MiB = 97.87%) 12.5MiB/s".
func (c *counts) line(now time.Time) string {
	var b strings.Builder
	if c.finished {
		if c.status != "" {
			fmt.Fprintf(&b, "%s: %s", c.name, c.status)
			return b.String()
		}
		fmt.Fprintf(&b, "%s: done %s / %s", c.name, HumanBytes(c.done+c.skipped), HumanBytes(c.total))
	} else {
		fmt.Fprintf(&b, "%s: %s / %s", c.name, HumanBytes(c.done+c.skipped), HumanBytes(c.total))
	}
	if c.skipped > 0 && c.total > 0 {
		fmt.Fprintf(&b, " (skipped: %s = %.2f%%)", HumanBytes(c.skipped), 100*float64(c.skipped)/float64(c.total))
	}
	if r, ok := c.rate(now); ok {
		fmt.Fprintf(&b, " %s/s", HumanBytes(int64(r)))
	}
	return b.String()
}

// rate is the average of bytes transferred per second since the bar started (skipped bytes
// cost no time, so they do not count); ok is false before there is anything to average.
func (c *counts) rate(now time.Time) (float64, bool) {
	if !c.end.IsZero() {
		now = c.end
	}
	elapsed := now.Sub(c.start).Seconds()
	if c.done == 0 || elapsed <= 0 {
		return 0, false
	}
	return float64(c.done) / elapsed, true
}

// eta is the time the bytes still to come take at the average rate; ok is false when the rate
// or the total is not known yet.
func (c *counts) eta(now time.Time) (time.Duration, bool) {
	r, ok := c.rate(now)
	left := c.total - c.done - c.skipped
	if !ok || c.total <= 0 || left < 0 {
		return 0, false
	}
	return time.Duration(float64(left) / r * float64(time.Second)).Round(time.Second), true
}

// HumanBytes formats n with binary units, as podman's progress bars do.
func HumanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// NewPlain returns a Reporter that prints one line when a bar starts and one when it ends (with
// the average rate); suited to logs and CI output.
func NewPlain(w io.Writer) Reporter { return &plain{w: w, now: time.Now} }

type plain struct {
	mu  sync.Mutex
	w   io.Writer
	now func() time.Time
}

type plainBar struct {
	p *plain
	c counts
}

func (p *plain) Bar(name string) Bar {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%s: started\n", name)
	return &plainBar{p: p, c: counts{name: name, start: p.now()}}
}

func (b *plainBar) SetTotal(n int64) { b.p.mu.Lock(); b.c.total = n; b.p.mu.Unlock() }
func (b *plainBar) Add(n int64)      { b.p.mu.Lock(); b.c.done += n; b.p.mu.Unlock() }
func (b *plainBar) Skip(n int64)     { b.p.mu.Lock(); b.c.skipped += n; b.p.mu.Unlock() }
func (b *plainBar) Done(status string) {
	b.p.mu.Lock()
	defer b.p.mu.Unlock()
	if b.c.finished {
		return
	}
	b.c.finished, b.c.status, b.c.end = true, status, b.p.now()
	fmt.Fprintln(b.p.w, b.c.line(b.c.end))
}

// Reader counts the bytes read through it on a bar, and in N.
type Reader struct {
	R   io.Reader
	Bar Bar
	N   int64
}

func (c *Reader) Read(p []byte) (int, error) {
	n, err := c.R.Read(p)
	c.N += int64(n)
	c.Bar.Add(int64(n))
	return n, err
}
