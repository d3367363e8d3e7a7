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

// tarFiles returns the contents of a tar's files by name.
func tarFiles(t testing.TB, tarBytes []byte) map[string][]byte {
	t.Helper()
	files := map[string][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return files
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
}

// contentsOf opens the contents of a tar's files by name, as a rebuild asks for them.
func contentsOf(t *testing.T, tarBytes []byte) func(string, int64) (io.ReadCloser, error) {
	t.Helper()
	files := tarFiles(t, tarBytes)
	return func(name string, size int64) (io.ReadCloser, error) {
		b, ok := files[name]
		if !ok {
			return nil, errors.New("no file " + name)
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
}

// TestRebuildEntriesMatchesTar: the rebuild of a decoded tar-split writes the original tar.
func TestRebuildEntriesMatchesTar(t *testing.T) {
	tb := oddTar(t)
	entries, err := DecodeTarSplit(tarSplitOf(t, tb), MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := RebuildEntries(entries, contentsOf(t, tb), &out); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), tb) {
		t.Fatalf("rebuilt %d bytes; the tar has %d", out.Len(), len(tb))
	}
}

// TestRebuildEntriesInvalidEntry: an entry the rebuild cannot lay out (a negative size, an
// unknown type) is refused before anything is written.
func TestRebuildEntriesInvalidEntry(t *testing.T) {
	open := func(string, int64) (io.ReadCloser, error) { return io.NopCloser(strings.NewReader("ab")), nil }
	for name, bad := range map[string][]storage.Entry{
		"negative size": {
			{Type: storage.SegmentType, Payload: []byte("header")},
			{Type: storage.FileType, Name: "f", Size: 2},
			{Type: storage.FileType, Name: "g", Size: -1},
		},
		"unknown type": {{Type: storage.SegmentType, Payload: []byte("x")}, {Type: 9}},
	} {
		var out bytes.Buffer
		if err := RebuildEntries(bad, open, &out); !errors.Is(err, errdefs.ErrInvalid) || out.Len() != 0 {
			t.Errorf("%s: %v, %d bytes written; want ErrInvalid and nothing written", name, err, out.Len())
		}
	}
}
