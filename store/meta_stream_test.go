package store_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// LayerTarSplitReader streams the bytes LayerTarSplit returns whole; a damaged frame is invalid
// and a missing layer not found.
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
	r, err := s.LayerTarSplitReader(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	streamed, err := io.ReadAll(r)
	if err != nil || r.Close() != nil {
		t.Fatalf("reading the stream: %v", err)
	}
	if len(whole) == 0 || !bytes.Equal(streamed, whole) {
		t.Fatalf("streamed %d bytes, LayerTarSplit %d, or they differ", len(streamed), len(whole))
	}

	path := filepath.Join(root, "layers", id.Encoded(), "tar-split.json.zst")
	z, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	z[len(z)/2] ^= 0xff
	os.Chmod(path, 0o644)
	if err := os.WriteFile(path, z, 0o444); err != nil {
		t.Fatal(err)
	}
	r, err = s.LayerTarSplitReader(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := io.ReadAll(r); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("a damaged tar-split frame read as %v, want ErrInvalid", err)
	}
	other := id.Algorithm().FromString("no such layer")
	if _, err := s.LayerTarSplitReader(ctx, other); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("a missing layer: %v, want ErrNotFound", err)
	}
}
