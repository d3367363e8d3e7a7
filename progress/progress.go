// Package progress reports the progress of long operations (pulls, pushes, conversions): bars on a
// terminal, plain lines in logs, nothing at all by default.
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

// Auto returns terminal bars when f is a terminal and plain lines otherwise.
func Auto(f *os.File) Reporter {
	if IsTerminal(f) {
		return NewTerminal(f)
	}
	return NewPlain(f)
}

// IsTerminal reports whether f is a terminal.
func IsTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// counts is the state every bar keeps.
type counts struct {
	name                 string
	total, done, skipped int64
	status               string
	finished             bool
}

// Line renders the state the way podman and skopeo do:
// "done 81.2MiB / 81.2MiB (skipped: 79.4MiB = 97.87%)".
func (c *counts) line() string {
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
	return b.String()
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

// NewPlain returns a Reporter that prints one line when a bar starts and one when it ends;
// suited to logs and CI output.
func NewPlain(w io.Writer) Reporter { return &plain{w: w} }

type plain struct {
	mu sync.Mutex
	w  io.Writer
}

type plainBar struct {
	p *plain
	c counts
}

func (p *plain) Bar(name string) Bar {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "%s: started\n", name)
	return &plainBar{p: p, c: counts{name: name}}
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
	b.c.finished, b.c.status = true, status
	fmt.Fprintln(b.p.w, b.c.line())
}

// NewTerminal returns a Reporter that redraws one line per bar in place, at most ten times a second.
func NewTerminal(w io.Writer) Reporter { return &terminal{w: w} }

type terminal struct {
	mu    sync.Mutex
	w     io.Writer
	bars  []*termBar
	drawn int // lines drawn last time
	last  time.Time
}

type termBar struct {
	t *terminal
	c counts
}

func (t *terminal) Bar(name string) Bar {
	t.mu.Lock()
	defer t.mu.Unlock()
	b := &termBar{t: t, c: counts{name: name}}
	t.bars = append(t.bars, b)
	t.redrawLocked(true)
	return b
}

// redrawLocked moves the cursor up over the previous drawing and prints every bar again.
func (t *terminal) redrawLocked(force bool) {
	now := time.Now()
	if !force && now.Sub(t.last) < 100*time.Millisecond {
		return
	}
	t.last = now
	var b strings.Builder
	if t.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", t.drawn)
	}
	for _, bar := range t.bars {
		b.WriteString("\x1b[2K")
		b.WriteString(bar.c.line())
		b.WriteByte('\n')
	}
	t.drawn = len(t.bars)
	io.WriteString(t.w, b.String())
}

func (b *termBar) update(f func(c *counts), force bool) {
	b.t.mu.Lock()
	defer b.t.mu.Unlock()
	f(&b.c)
	b.t.redrawLocked(force)
}

func (b *termBar) SetTotal(n int64) { b.update(func(c *counts) { c.total = n }, false) }
func (b *termBar) Add(n int64)      { b.update(func(c *counts) { c.done += n }, false) }
func (b *termBar) Skip(n int64)     { b.update(func(c *counts) { c.skipped += n }, false) }
func (b *termBar) Done(status string) {
	b.update(func(c *counts) { c.finished, c.status = true, status }, true)
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
