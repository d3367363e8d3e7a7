package progress

import (
	"bytes"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vbauerster/mpb/v8"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 85146419: "81.2MiB", 5 << 30: "5.0GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

// clock is a fake time.Now that a test moves by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time      { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

func TestPlainLinesShowSkippedAndRate(t *testing.T) {
	var buf bytes.Buffer
	c := &clock{t: time.Unix(0, 0)}
	r := &plain{w: &buf, now: c.now}
	b := r.Bar("sha256:abc")
	b.SetTotal(85146419)
	b.Skip(83256115)
	b.Add(85146419 - 83256115) // 1.8MiB transferred in 2s
	c.add(2 * time.Second)
	b.Done("")
	b.Done("") // a second Done prints nothing
	f := r.Bar("sha256:def")
	f.Done("failed: boom")
	want := "sha256:abc: started\nsha256:abc: done 81.2MiB / 81.2MiB (skipped: 79.4MiB = 97.78%) 923.0KiB/s\n" +
		"sha256:def: started\nsha256:def: failed: boom\n"
	if buf.String() != want {
		t.Fatalf("got %q, want %q", buf.String(), want)
	}
}

// frames is a terminal's writer that hands each frame mpb writes to the test.
type frames chan string

func (f frames) Write(p []byte) (int, error) { f <- string(p); return len(p), nil }

// TestTerminalShowsRateAndETA draws frames on demand with a fake clock: each layer's bar and
// the total show bytes, rate and ETA while running, and how each ended once finished.
func TestTerminalShowsRateAndETA(t *testing.T) {
	c := &clock{t: time.Unix(0, 0)}
	out := make(frames, 100)
	refresh := make(chan any)
	r := newTerminal(c.now, mpb.WithOutput(out), mpb.WithManualRefresh(refresh))
	a, b := r.Bar("layer-a"), r.Bar("layer-b")
	a.SetTotal(4 << 20)
	b.SetTotal(4 << 20)
	a.Add(1 << 20)
	b.Skip(2 << 20)
	c.add(time.Second)
	refresh <- struct{}{}
	frame := <-out
	for _, want := range []string{
		"layer-a", "1.0MiB / 4.0MiB 1.0MiB/s ETA 3s", // 3MiB left at 1MiB/s
		"layer-b", "2.0MiB / 4.0MiB",
		"total", "3.0MiB / 8.0MiB 1.0MiB/s ETA 5s",
	} {
		if !strings.Contains(frame, want) {
			t.Errorf("frame lacks %q:\n%s", want, frame)
		}
	}
	if strings.Contains(frame, "layer-b 2.0MiB / 4.0MiB 0") || strings.Count(frame, "ETA") != 2 {
		t.Errorf("a bar with nothing transferred yet shows no rate or ETA:\n%s", frame)
	}
	a.Add(3 << 20)
	a.Done("")
	b.Done("failed: boom")
	Finish(r)
	close(out)
	var last string
	for f := range out {
		last += f
	}
	for _, want := range []string{"4.0MiB / 4.0MiB 4.0MiB/s done", "failed: boom", "6.0MiB / 8.0MiB"} {
		if !strings.Contains(last, want) {
			t.Errorf("last frames lack %q:\n%s", want, last)
		}
	}
}
