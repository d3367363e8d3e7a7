package ocilayout_test

import (
	"context"
	"io"
	"testing"

	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/source/sourcetest"
)

// TestSourceSuite runs the shared source suite over an OCI layout directory.
func TestSourceSuite(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, f sourcetest.Fixture) sourcetest.Subject {
		dir := t.TempDir()
		w, err := ocilayout.Create(dir)
		if err != nil {
			t.Fatal(err)
		}
		for _, b := range [][]byte{f.Blob, f.Config, f.Manifest} {
			if _, err := w.PutBlob(b); err != nil {
				t.Fatal(err)
			}
		}
		if err := w.AddManifest(f.ManifestDesc, "v1"); err != nil {
			t.Fatal(err)
		}
		return sourcetest.Subject{Source: ocilayout.NewSource(dir, "v1"), Name: "v1"}
	})
}

// TestSourceStatisticsAreALayout: a layout makes no HTTP requests and merges nothing, so it
// reports none; what it read is what fn read.
func TestSourceStatisticsAreALayout(t *testing.T) {
	f := sourcetest.NewFixture(t)
	dir := t.TempDir()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.PutBlob(f.Blob); err != nil {
		t.Fatal(err)
	}
	ranges := []source.Range{{Offset: 0, Length: 1000}, {Offset: 5000, Length: 300}}
	rep, err := ocilayout.NewSource(dir, "").GetRanges(context.Background(), f.BlobDesc, ranges, func(r source.Range, rd io.Reader) error {
		_, err := io.CopyN(io.Discard, rd, r.Length/2)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	want := source.Fetched{Ranges: 2, BytesRequested: 1300, BytesReceived: 650}
	if rep != want {
		t.Fatalf("statistics %+v, want %+v", rep, want)
	}
}
