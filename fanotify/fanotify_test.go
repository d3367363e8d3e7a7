package fanotify

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
)

func newGroup(t *testing.T) *Group {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content events need CAP_SYS_ADMIN")
	}
	g, err := NewPreContent()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	return g
}

// placeholder makes an empty file and returns a write descriptor opened before the mark (so
// the test's own writes raise no event) with the file marked.
func placeholder(t *testing.T, g *Group) (string, *os.File) {
	t.Helper()
	p := filepath.Join(t.TempDir(), "obj")
	w, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	if err := g.Mark(w, PreAccess); err != nil {
		t.Fatal(err)
	}
	return p, w
}

type readResult struct {
	b   []byte
	err error
}

func readAsync(p string) chan readResult {
	ch := make(chan readResult, 1)
	go func() {
		b, err := os.ReadFile(p)
		ch <- readResult{b, err}
	}()
	return ch
}

func nextEvent(t *testing.T, g *Group) Event {
	t.Helper()
	evs, err := g.Read(make([]byte, 4096))
	if err != nil {
		t.Fatal(err)
	}
	if len(evs) == 0 || evs[0].File == nil {
		t.Fatalf("events %+v", evs)
	}
	return evs[0]
}

func TestFillOnFirstRead(t *testing.T) {
	g := newGroup(t)
	p, w := placeholder(t, g)
	content := bytes.Repeat([]byte("kura lazy "), 50000)
	got := readAsync(p)
	ev := nextEvent(t, g)
	if ev.Mask&PreAccess == 0 || !ev.HasRange || ev.Offset != 0 || ev.Count == 0 {
		t.Fatalf("event %+v: want FAN_PRE_ACCESS with a range at offset 0", ev)
	}
	if ev.PID <= 0 {
		t.Fatalf("event pid %d", ev.PID)
	}
	if _, err := w.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	// Every access of a marked file raises an event: a filled file is unmarked, so the
	// reader's next reads go straight through.
	if err := g.Unmark(w); err != nil {
		t.Fatal(err)
	}
	if err := g.Allow(ev); err != nil {
		t.Fatal(err)
	}
	r := <-got
	if r.err != nil || !bytes.Equal(r.b, content) {
		t.Fatalf("reader got %d bytes, err %v; want the %d filled bytes", len(r.b), r.err, len(content))
	}
}

func TestDenyFailsTheRead(t *testing.T) {
	g := newGroup(t)
	p, _ := placeholder(t, g)
	got := readAsync(p)
	if err := g.Deny(nextEvent(t, g), syscall.EIO); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !errors.Is(r.err, syscall.EIO) {
		t.Fatalf("reader got %d bytes, err %v; want EIO", len(r.b), r.err)
	}
}

// TestListenerGone: when the group closes with an event pending, the kernel lets the read
// through, so a placeholder kept at length 0 reads short, never as zeros.
func TestListenerGone(t *testing.T) {
	g := newGroup(t)
	p, _ := placeholder(t, g)
	got := readAsync(p)
	nextEvent(t, g) // taken, never answered
	g.Close()
	r := <-got
	if r.err != nil || len(r.b) != 0 {
		t.Fatalf("reader got %d bytes, err %v; want a short (empty) read", len(r.b), r.err)
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	b := make([]byte, metadataLen)
	b[0] = 200 // event_len beyond the buffer
	b[4] = metadataVersion
	if _, err := parse(b); err == nil {
		t.Fatal("parse accepted an event longer than its buffer")
	}
}

// TestOpenPermFillsBeforeMap: a file marked with OpenPerm raises the event at open, before
// the opener holds a descriptor, so a listener fills it there and a mapping made after the
// open sees the bytes (a first access by mmap raises no pre-content event of its own).
func TestOpenPermFillsBeforeMap(t *testing.T) {
	g := newGroup(t)
	p := filepath.Join(t.TempDir(), "obj")
	w, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	if err := g.Mark(w, OpenPerm|PreAccess); err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("mapped "), 3000)
	got := make(chan readResult, 1)
	go func() { got <- mapFile(p, len(content)) }()
	ev := nextEvent(t, g)
	if ev.Mask&OpenPerm == 0 || ev.HasRange {
		t.Fatalf("event %+v: want FAN_OPEN_PERM, with no range", ev)
	}
	if _, err := w.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	if err := g.Unmark(w); err != nil {
		t.Fatal(err)
	}
	if err := g.Allow(ev); err != nil {
		t.Fatal(err)
	}
	if r := <-got; r.err != nil || !bytes.Equal(r.b, content) {
		t.Fatalf("mapping gave %d bytes, err %v; want the %d filled bytes", len(r.b), r.err, len(content))
	}
}

// mapFile opens p, maps n bytes of it and copies them out of the mapping.
func mapFile(p string, n int) readResult {
	f, err := os.Open(p)
	if err != nil {
		return readResult{err: err}
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return readResult{err: err}
	}
	defer syscall.Munmap(m)
	return readResult{b: bytes.Clone(m)}
}
