package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestLayerMetadataSizes: a layer record gives the TOC and tar-split JSON sizes, which only size
// the buffers they are read into: a record with wrong sizes, or none, reads back the same bytes.
func TestLayerMetadataSizes(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("alpha"), "dir/b": bytes.Repeat([]byte("b"), 5000)}))
	id := img.Layers[0]
	l, err := s.Layer(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	toc, err := s.LayerTOC(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	ts, err := s.LayerTarSplit(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	tocJSON, _ := json.Marshal(toc)
	if l.TOCSize != int64(len(tocJSON)) || l.TarSplitSize != int64(len(ts)) {
		t.Fatalf("record sizes %d, %d; JSON has %d, %d", l.TOCSize, l.TarSplitSize, len(tocJSON), len(ts))
	}
	rec := filepath.Join(root, "layers", id.Encoded(), "layer.json")
	for _, sizes := range [][2]int64{{1, 3}, {0, 0}, {1 << 40, -5}, {int64(len(tocJSON)) * 50, int64(len(ts)) * 50}} {
		l.TOCSize, l.TarSplitSize = sizes[0], sizes[1]
		b, _ := json.Marshal(l)
		os.Chmod(rec, 0o644)
		if err := os.WriteFile(rec, b, 0o444); err != nil {
			t.Fatal(err)
		}
		toc2, err := s.LayerTOC(ctx, id)
		if err != nil {
			t.Fatalf("sizes %v: %v", sizes, err)
		}
		ts2, err := s.LayerTarSplit(ctx, id)
		if err != nil {
			t.Fatalf("sizes %v: %v", sizes, err)
		}
		tocJSON2, _ := json.Marshal(toc2)
		if !bytes.Equal(tocJSON2, tocJSON) || !bytes.Equal(ts2, ts) {
			t.Fatalf("sizes %v: metadata read back differs", sizes)
		}
	}
	if rep, err := s.Fsck(ctx, false); err != nil || !rep.Clean() {
		t.Fatalf("fsck: %+v %v", rep, err)
	}
}
