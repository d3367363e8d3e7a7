package store_test

import (
	"context"
	"math/rand"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerfs"
)

// TestLayerEntries: a stored layer reads back as one entry per file, the chunk rows of its TOC
// attached to their file, and its objects are the contents of its files.
func TestLayerEntries(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	big := make([]byte, 4<<20)
	rand.New(rand.NewSource(7)).Read(big)
	files := map[string][]byte{"big": big, "a": []byte("hello"), "b": nil} // tarOf knows a, b, c and big
	img := teststore.Named(t, s, "one", tarOf(t, files))
	entries, err := s.LayerEntries(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	toc, err := s.LayerTOC(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	var rows []chunked.Entry // the big file's row and its chunk rows
	for _, e := range toc.Entries {
		if e.Name == "big" {
			rows = append(rows, e)
		}
	}
	byName := map[string]*layerfs.Entry{}
	for i := range entries {
		byName[entries[i].Name] = &entries[i]
	}
	if len(entries) != len(files) || len(byName) != len(files) {
		t.Fatalf("%d entries (%d names), want %d", len(entries), len(byName), len(files))
	}
	e := byName["big"]
	if e.Digest != digest.FromBytes(big) || len(rows) < 2 || len(e.Chunks) != len(rows) {
		t.Fatalf("big: %s with %d chunks; TOC has %d rows", e.Digest, len(e.Chunks), len(rows))
	}
	for i, c := range e.Chunks {
		if c.Offset != rows[i].ChunkOffset || c.Size != rows[i].ChunkSize || c.Digest.String() != rows[i].ChunkDigest ||
			c.Digest != digest.FromBytes(big[c.Offset:c.Offset+c.Size]) {
			t.Fatalf("big chunk %d: %+v, TOC row %+v", i, c, rows[i])
		}
	}
	if e := byName["b"]; e.Type != layerfs.TypeReg || e.Digest != "" || e.Chunks != nil {
		t.Fatalf("empty file: %+v", e)
	}
	objs, err := s.LayerObjects(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	want := []digest.Digest{digest.FromBytes(big), digest.FromBytes([]byte("hello"))}
	slices.Sort(want)
	if !slices.Equal(objs, want) {
		t.Fatalf("objects %v, want %v", objs, want)
	}
}
