package store_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// readTarSplit reads a layer's tar-split through LayerTarSplitReader.
func readTarSplit(s *store.Store, id digest.Digest) ([]byte, error) {
	r, err := s.LayerTarSplitReader(context.Background(), id)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

// LayerTarSplitReader gives the bytes LayerTarSplit returns whole, decoded whole (a tar-split
// smaller than its window) or streamed (the record says it is larger); a damaged frame is
// invalid either way, and a missing layer not found.
func TestLayerTarSplitReader(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("alpha"), "dir/b": bytes.Repeat([]byte("b"), 5000)}))
	id := img.Layers[0]
	whole, err := s.LayerTarSplit(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "layers", id.Encoded())
	setRecord := func(tarSplitSize int64) {
		l, err := s.Layer(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		l.TarSplitSize = tarSplitSize
		b, _ := json.Marshal(l)
		os.Chmod(filepath.Join(dir, "layer.json"), 0o644)
		if err := os.WriteFile(filepath.Join(dir, "layer.json"), b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
	sizes := map[string]int64{"whole": int64(len(whole)), "streamed": 1 << 30}
	for name, size := range sizes {
		setRecord(size)
		got, err := readTarSplit(s, id)
		if err != nil || len(whole) == 0 || !bytes.Equal(got, whole) {
			t.Fatalf("%s: read %d bytes (%v), LayerTarSplit %d, or they differ", name, len(got), err, len(whole))
		}
	}

	path := filepath.Join(dir, "tar-split.json.zst")
	z, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	z[len(z)/2] ^= 0xff
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, z, 0o444); err != nil {
		t.Fatal(err)
	}
	for name, size := range sizes {
		setRecord(size)
		if _, err := readTarSplit(s, id); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: a damaged tar-split frame read as %v, want ErrInvalid", name, err)
		}
	}
	other := id.Algorithm().FromString("no such layer")
	if _, err := s.LayerTarSplitReader(ctx, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a missing layer: %v, want ErrNotFound", err)
	}
}
