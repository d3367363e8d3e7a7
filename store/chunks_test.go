package store_test

import (
	"context"
	"crypto/sha256"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestChunkIndex: chunks of a large file are found through the chunk index file that PutLayer
// keeps, and still found when that file is missing, torn or stale (it is only a cache); chunks
// of a deleted layer's objects are not found once gc removed them.
func TestChunkIndex(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	big := make([]byte, 4<<20)
	rand.New(rand.NewSource(7)).Read(big)
	img := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"big": big}))
	toc, err := s.LayerTOC(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	var chunks []chunked.Entry
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeChunk {
			chunks = append(chunks, e)
		}
	}
	if len(chunks) < 2 {
		t.Fatalf("a 4 MiB random file gave %d chunk entries", len(chunks))
	}
	index := filepath.Join(root, "chunk-index")
	if fi, err := os.Stat(index); err != nil || fi.Size() < int64(len(chunks))*80 {
		t.Fatalf("chunk index after PutLayer: %v %v", fi, err)
	}
	check := func(when string, s *store.Store) {
		t.Helper()
		for _, e := range chunks {
			loc, err := s.FindChunk(ctx, digest.Digest(e.ChunkDigest), e.ChunkSize)
			if err != nil || loc.Offset != e.ChunkOffset || loc.Size != e.ChunkSize {
				t.Fatalf("%s: FindChunk(%s) = %+v, %v", when, e.ChunkDigest, loc, err)
			}
		}
	}
	check("fresh", s)
	reopen := func() *store.Store {
		s := teststore.Open(t, teststore.At(root))
		return s
	}
	check("reopened", reopen())
	b, _ := os.ReadFile(index)
	for name, damage := range map[string]func(){
		"missing": func() { os.Remove(index) },
		"torn":    func() { os.WriteFile(index, b[:len(b)/2], 0o644) },
		"flipped": func() { c := append([]byte(nil), b...); c[len(c)/2] ^= 1; os.WriteFile(index, c, 0o644) },
		// A valid, sealed index that covers no layer: the layer is added from its TOC.
		"stale": func() {
			body := []byte("KURACIX1\x00\x00\x00\x00\x00\x00\x00\x00")
			sum := sha256.Sum256(body)
			os.WriteFile(index, append(body, sum[:]...), 0o644)
		},
	} {
		damage()
		check(name, reopen())
	}
	// A whole file is found as an object, without the index.
	if loc, err := s.FindChunk(ctx, digest.FromBytes(big), int64(len(big))); err != nil || loc.Offset != 0 {
		t.Fatalf("whole file as a chunk: %+v %v", loc, err)
	}
	if _, err := s.FindChunk(ctx, digest.FromBytes(big), int64(len(big))-1); err == nil {
		t.Fatal("whole file found under the wrong size")
	}
	// Dropping the image and collecting garbage leaves nothing to find.
	unlock, _ := s.RLock(ctx)
	s.DeleteRef(ctx, "one")
	unlock()
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	s = reopen()
	for _, e := range chunks {
		if loc, err := s.FindChunk(ctx, digest.Digest(e.ChunkDigest), e.ChunkSize); err == nil {
			t.Fatalf("chunk %s found after gc: %+v", e.ChunkDigest, loc)
		}
	}
}
