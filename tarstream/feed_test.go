package tarstream

import (
	"archive/tar"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// contentsOf opens the contents of a tar's files by name, as a rebuild asks for them.
func contentsOf(t *testing.T, tarBytes []byte) func(string, int64) (io.ReadCloser, error) {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[h.Name] = b
	}
	return func(name string, size int64) (io.ReadCloser, error) {
		b, ok := files[name]
		if !ok {
			return nil, errors.New("no file " + name)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// TestRebuildStreamMatchesEntries: a rebuild that reads a feed while another goroutine fills
// it writes the very tar the rebuild of the whole slice writes, which is the original.
func TestRebuildStreamMatchesEntries(t *testing.T) {
	tb := oddTar(t)
	entries, err := DecodeTarSplit(tarSplitOf(t, tb), MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	open := contentsOf(t, tb)
	var whole bytes.Buffer
	if err := RebuildEntries(entries, open, &whole); err != nil {
		t.Fatal(err)
	}
	feed := NewFeed(1) // too small: the feed grows while the rebuild reads it
	go func() {
		for _, e := range entries {
			feed.Append(e)
		}
		feed.Close(nil)
	}()
	var streamed bytes.Buffer
	if err := RebuildStream(feed.Reader(), open, &streamed); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(whole.Bytes(), tb) || !bytes.Equal(streamed.Bytes(), tb) {
		t.Fatalf("rebuilt %d bytes from the slice and %d from the feed; the tar has %d", whole.Len(), streamed.Len(), len(tb))
	}
	got, err := feed.Entries()
	if err != nil || len(got) != len(entries) {
		t.Fatalf("feed holds %d entries (%v), want %d", len(got), err, len(entries))
	}
}

// TestRebuildStreamFeedFails: a feed closed with an error while the rebuild is consuming it
// (it has opened a file) ends the rebuild with that error, and Entries reports it too.
func TestRebuildStreamFeedFails(t *testing.T) {
	tb := oddTar(t)
	entries, err := DecodeTarSplit(tarSplitOf(t, tb), MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	contents := contentsOf(t, tb)
	opened := make(chan struct{}, len(entries))
	open := func(name string, size int64) (io.ReadCloser, error) {
		opened <- struct{}{}
		return contents(name, size)
	}
	feed := NewFeed(len(entries))
	for _, e := range entries { // up to the first file with content, which the rebuild opens
		feed.Append(e)
		if e.Type == storage.FileType && e.Size > 0 {
			break
		}
	}
	failed := errors.New("prediction failed midway")
	go func() {
		<-opened
		feed.Close(failed)
		feed.Close(nil) // only the first Close counts
	}()
	if err := RebuildStream(feed.Reader(), open, io.Discard); !errors.Is(err, failed) {
		t.Fatalf("rebuild of a feed that failed midway: %v", err)
	}
	if es, err := feed.Entries(); !errors.Is(err, failed) || es != nil {
		t.Fatalf("Entries of a failed feed: %d entries, %v", len(es), err)
	}
}

// TestRebuildStreamInvalidEntry: an entry the rebuild cannot lay out stops a streamed rebuild
// where it comes; the slice rebuild refuses it before writing anything.
func TestRebuildStreamInvalidEntry(t *testing.T) {
	open := func(string, int64) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("ab")), nil }
	bad := []storage.Entry{
		{Type: storage.SegmentType, Payload: []byte("header")},
		{Type: storage.FileType, Name: "f", Size: 2},
		{Type: storage.FileType, Name: "g", Size: -1},
	}
	feed := NewFeed(len(bad))
	for _, e := range bad {
		feed.Append(e)
	}
	feed.Close(nil)
	var out bytes.Buffer
	if err := RebuildStream(feed.Reader(), open, &out); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("streamed rebuild of a negative size: %v", err)
	}
	out.Reset()
	if err := RebuildEntries(bad, open, &out); !errors.Is(err, errdefs.ErrInvalid) || out.Len() != 0 {
		t.Fatalf("rebuild of a negative size: %v, %d bytes written", err, out.Len())
	}
	unknown := []storage.Entry{{Type: storage.SegmentType, Payload: []byte("x")}, {Type: 9}}
	if err := RebuildStream(sliceReader(unknown), open, io.Discard); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("streamed rebuild of an unknown entry type: %v", err)
	}
}
