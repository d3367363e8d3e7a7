package progress

import (
	"bytes"
	"strings"
	"testing"
)

func TestHumanBytes(t *testing.T) {
	for n, want := range map[int64]string{0: "0B", 1023: "1023B", 1024: "1.0KiB", 85146419: "81.2MiB", 5 << 30: "5.0GiB"} {
		if got := HumanBytes(n); got != want {
			t.Errorf("HumanBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestPlainLinesShowSkipped(t *testing.T) {
	var buf bytes.Buffer
	r := NewPlain(&buf)
	b := r.Bar("sha256:abc")
	b.SetTotal(85146419)
	b.Skip(83256115)
	b.Add(85146419 - 83256115)
	b.Done("")
	b.Done("") // a second Done prints nothing
	want := "sha256:abc: started\nsha256:abc: done 81.2MiB / 81.2MiB (skipped: 79.4MiB = 97.78%)\n"
	if buf.String() != want {
		t.Fatalf("got %q, want %q", buf.String(), want)
	}
}

func TestTerminalRedrawsInPlace(t *testing.T) {
	var buf bytes.Buffer
	r := NewTerminal(&buf)
	a, b := r.Bar("a"), r.Bar("b")
	a.SetTotal(10)
	b.SetTotal(10)
	a.Done("")
	b.Done("failed: boom")
	out := buf.String()
	if !strings.Contains(out, "\x1b[1A") || !strings.Contains(out, "\x1b[2A") {
		t.Fatalf("expected cursor-up sequences in %q", out)
	}
	last := out[strings.LastIndex(out, "\x1b[2A"):]
	if !strings.Contains(last, "a: done 0B / 10B") || !strings.Contains(last, "b: failed: boom") {
		t.Fatalf("final drawing wrong: %q", last)
	}
}
