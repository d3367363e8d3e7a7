package lazy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/fanotify"
	"github.com/kura-oci/kura/internal/testkit"
)

// composefsWithPlaceholder builds a composefs image of one 300 KiB file, moves its object from
// the first data directory to a length-0 placeholder at the same name in a second one (what a
// lazy layer's placeholder directory holds) and mounts the image over both. It returns the
// file's content, its path in the mount and the placeholder's path.
func composefsWithPlaceholder(t *testing.T) (content []byte, inMount, ph string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting needs root")
	}
	src, objects, placeholders, target := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	content = make([]byte, 300<<10)
	rand.New(rand.NewSource(1)).Read(content)
	if err := os.WriteFile(filepath.Join(src, "f"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := composefs.FromDir(context.Background(), src, composefs.WithDigestStore(objects))
	if err != nil {
		t.Fatal(err)
	}
	img, err := composefs.BuildImage(root)
	if err != nil {
		t.Fatal(err)
	}
	image := filepath.Join(t.TempDir(), "image.cfs")
	if err := os.WriteFile(image, img, 0o644); err != nil {
		t.Fatal(err)
	}
	objs, _ := filepath.Glob(filepath.Join(objects, "*", "*"))
	if len(objs) != 1 {
		t.Fatalf("objects %v", objs)
	}
	rel, _ := filepath.Rel(objects, objs[0])
	ph = filepath.Join(placeholders, rel)
	if err := os.MkdirAll(filepath.Dir(ph), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(ph, nil, 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(objs[0]); err != nil {
		t.Fatal(err)
	}
	plan, err := mount.NewPlan(image, []string{objects, placeholders}, target)
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := mount.Unmount(target); err != nil {
			t.Errorf("unmounting the test's composefs mount: %v", err)
		}
	})
	return content, filepath.Join(target, "f"), ph
}

// TestLengthZeroPlaceholderReadsShort: what this kernel does when the metadata says N bytes and
// the data file is empty: stat shows N, a read gets nothing (EOF), never zeros.
func TestLengthZeroPlaceholderReadsShort(t *testing.T) {
	content, inMount, _ := composefsWithPlaceholder(t)
	st, err := os.Stat(inMount)
	if err != nil || st.Size() != int64(len(content)) {
		t.Fatalf("stat through the mount: %v, %v; want size %d", st, err, len(content))
	}
	b, err := os.ReadFile(inMount)
	if err != nil {
		t.Logf("read error %v", err)
	}
	if len(b) != 0 {
		t.Fatalf("read %d bytes of an empty placeholder; want a short read, never zeros", len(b))
	}
}

// TestPlaceholderFilledThroughComposefs: a read through the mount raises FAN_PRE_ACCESS on the
// placeholder in the second data directory; filling it and allowing gives the reader the bytes.
func TestPlaceholderFilledThroughComposefs(t *testing.T) {
	content, inMount, ph := composefsWithPlaceholder(t)
	g, w := markPlaceholder(t, ph, fanotify.PreAccess)
	got := make(chan []byte, 1)
	go func() {
		f, err := os.Open(inMount)
		if err != nil {
			got <- nil
			return
		}
		b, _ := io.ReadAll(f)
		f.Close() // before the answer: the test's unmount follows it
		got <- b
	}()
	evs, err := g.Read(make([]byte, 4096))
	if err != nil || len(evs) != 1 || !evs[0].HasRange {
		t.Fatalf("events %+v, %v", evs, err)
	}
	fillAndAllow(t, g, w, content, evs[0])
	if b := <-got; !bytes.Equal(b, content) {
		t.Fatalf("reader got %d bytes; want the %d filled", len(b), len(content))
	}
}

// TestOpenThroughComposefsRaisesOpenPerm: what fill at open rests on. Opening a file of a
// composefs mount makes overlay open the data-only lower file, which raises FAN_OPEN_PERM on
// the placeholder before the opener holds a descriptor; filled there, a mapping made after the
// open (with no read, which raises no event of its own) gives the bytes.
func TestOpenThroughComposefsRaisesOpenPerm(t *testing.T) {
	content, inMount, ph := composefsWithPlaceholder(t)
	g, w := markPlaceholder(t, ph, fanotify.OpenPerm)
	got := make(chan []byte, 1)
	go func() { got <- mapMounted(inMount, len(content)) }()
	evs, err := g.Read(make([]byte, 4096))
	if err != nil || len(evs) != 1 || evs[0].Mask&fanotify.OpenPerm == 0 {
		t.Fatalf("events %+v, %v; want one FAN_OPEN_PERM", evs, err)
	}
	fillAndAllow(t, g, w, content, evs[0])
	if b := <-got; !bytes.Equal(b, content) {
		t.Fatalf("the mapping gave %d bytes; want the %d filled", len(b), len(content))
	}
}

// markPlaceholder opens placeholder ph for writing and marks it in a new pre-content group
// with mask; both are closed when the test ends.
func markPlaceholder(t *testing.T, ph string, mask uint64) (*fanotify.Group, *os.File) {
	t.Helper()
	g, w := groupAndWriter(t, ph)
	if err := g.Mark(w, mask); err != nil {
		t.Fatal(err)
	}
	return g, w
}

// groupAndWriter makes a new pre-content group and opens placeholder ph for writing (before
// any mark, so the open raises no event); both are closed when the test ends.
func groupAndWriter(t *testing.T, ph string) (*fanotify.Group, *os.File) {
	t.Helper()
	g, err := fanotify.NewPreContent()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { g.Close() })
	w, err := os.OpenFile(ph, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.Close() })
	return g, w
}

// fillAndAllow writes content into the marked placeholder w, unmarks it and allows ev.
func fillAndAllow(t *testing.T, g *fanotify.Group, w *os.File, content []byte, ev fanotify.Event) {
	t.Helper()
	if _, err := w.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	if err := g.Unmark(w); err != nil {
		t.Fatal(err)
	}
	if err := g.Allow(ev); err != nil {
		t.Fatal(err)
	}
}

// mapMounted opens p, maps n bytes and copies them out of the mapping (nil on an error).
func mapMounted(p string, n int) []byte {
	f, err := os.Open(p)
	if err != nil {
		return nil
	}
	defer f.Close()
	m, err := syscall.Mmap(int(f.Fd()), 0, n, syscall.PROT_READ, syscall.MAP_SHARED)
	if err != nil {
		return nil
	}
	defer syscall.Munmap(m)
	return bytes.Clone(m)
}

// TestDirMarkUntilIgnored: what Watch rests on. A mark on a placeholder's directory raises
// FAN_OPEN_PERM for the placeholder opened through the mount, on a descriptor whose path ends
// in the placeholder's directory and name; once the placeholder has an ignore mark, opens and
// reads of it raise nothing.
func TestDirMarkUntilIgnored(t *testing.T) {
	content, inMount, ph := composefsWithPlaceholder(t)
	g, w := groupAndWriter(t, ph)
	if err := g.MarkChildren(filepath.Dir(ph), fanotify.OpenPerm|fanotify.PreAccess); err != nil {
		t.Fatal(err)
	}
	got := make(chan []byte, 1)
	go func() { got <- mapMounted(inMount, len(content)) }()
	evs, err := g.Read(make([]byte, 4096))
	if err != nil || len(evs) != 1 || evs[0].Mask&fanotify.OpenPerm == 0 {
		t.Fatalf("events %+v, %v; want one FAN_OPEN_PERM", evs, err)
	}
	// Opened through overlay's private clone of the data directory's mount: the path is
	// relative to that directory, and ends in the placeholder's fan-out directory and name.
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", evs[0].File.Fd()))
	if err != nil || placeholderKey(link) != placeholderKey(ph) {
		t.Fatalf("the event's descriptor is %q (%v); want a path ending in %q", link, err, placeholderKey(ph))
	}
	if _, err := w.WriteAt(content, 0); err != nil {
		t.Fatal(err)
	}
	if err := g.IgnorePath(ph, fanotify.OpenPerm|fanotify.PreAccess); err != nil {
		t.Fatal(err)
	}
	g.Allow(evs[0])
	if b := <-got; !bytes.Equal(b, content) {
		t.Fatalf("the mapping gave %d bytes; want the %d filled", len(b), len(content))
	}
	// Read again: an event now would be the ignore mark not working (and would block the read
	// until answered), so it fails the test.
	events := make(chan []fanotify.Event, 1)
	go func() {
		evs, _ := g.Read(make([]byte, 4096)) // returns when the test's cleanup closes g
		events <- evs
	}()
	read := make(chan error, 1)
	go func() {
		b, err := os.ReadFile(inMount)
		if err == nil && !bytes.Equal(b, content) {
			err = fmt.Errorf("%d bytes, not the content", len(b))
		}
		read <- err
	}()
	select {
	case err := <-read:
		if err != nil {
			t.Fatalf("read again: %v", err)
		}
	case evs := <-events:
		for _, ev := range evs {
			g.Allow(ev)
		}
		t.Fatalf("a filled, ignore-marked placeholder raised %d events", len(evs))
	}
}
