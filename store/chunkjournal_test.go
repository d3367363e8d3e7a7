package store_test

import (
	"bytes"
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// bigChunks stores an image of one random 4 MiB file and returns the chunk entries of its TOC.
func bigChunks(t *testing.T, s *store.Store, name string, seed int64) []chunked.Entry {
	t.Helper()
	big := make([]byte, 4<<20)
	rand.New(rand.NewSource(seed)).Read(big)
	img := teststore.Named(t, s, name, tarOf(t, map[string][]byte{"big": big}))
	toc, err := s.LayerTOC(context.Background(), img.Layers[0])
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
	return chunks
}

// findsAll reports the first chunk s does not find where the TOC puts it.
func findsAll(s *store.Store, chunks []chunked.Entry) (chunked.Entry, bool) {
	for _, e := range chunks {
		loc, err := s.FindChunk(context.Background(), digest.Digest(e.ChunkDigest), e.ChunkSize)
		if err != nil || loc.Offset != e.ChunkOffset || loc.Size != e.ChunkSize {
			return e, false
		}
	}
	return chunked.Entry{}, true
}

// TestChunkJournal: a layer recorded into a store whose chunk index exists is appended to the
// journal, the index file left as it was; a reopened store finds the chunks of both layers, also
// when the journal's tail is torn; once a layer is deleted and collected, its chunks are no longer
// found and the other layer's still are.
func TestChunkJournal(t *testing.T) {
	root := t.TempDir()
	open := func() *store.Store { return teststore.Open(t, teststore.At(root)) }
	s := open()
	one := bigChunks(t, s, "one", 7)
	index, journal := filepath.Join(root, "chunk-index"), filepath.Join(root, "chunk-index.journal")
	before, err := os.ReadFile(index)
	if err != nil {
		t.Fatal(err)
	}
	two := bigChunks(t, s, "two", 8)
	if after, err := os.ReadFile(index); err != nil || !bytes.Equal(after, before) {
		t.Fatalf("the index file was rewritten for the second layer (%v)", err)
	}
	j, err := os.ReadFile(journal)
	if err != nil || len(j) < len(two)*80 {
		t.Fatalf("journal after the second layer: %d bytes, %v", len(j), err)
	}
	for when, chunks := range map[string][]chunked.Entry{"one": one, "two": two} {
		if e, ok := findsAll(open(), chunks); !ok {
			t.Fatalf("reopened: chunk %s of %s not found", e.ChunkDigest, when)
		}
	}
	if err := os.WriteFile(journal, j[:len(j)-7], 0o644); err != nil {
		t.Fatal(err)
	}
	if e, ok := findsAll(open(), two); !ok {
		t.Fatalf("torn journal: chunk %s not found", e.ChunkDigest)
	}
	ctx := context.Background()
	unlock, _ := s.RLock(ctx)
	s.DeleteRef(ctx, "two")
	unlock()
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	s = open()
	if e, ok := findsAll(s, one); !ok {
		t.Fatalf("after gc of the other layer: chunk %s not found", e.ChunkDigest)
	}
	for _, e := range two {
		if loc, err := s.FindChunk(ctx, digest.Digest(e.ChunkDigest), e.ChunkSize); err == nil {
			t.Fatalf("chunk %s of a collected layer found: %+v", e.ChunkDigest, loc)
		}
	}
}

// TestGCFoldsChunkJournal: gc folds a journal into the index file even when it deletes no layer.
// A gc killed after rewriting the index and before removing the journal leaves this state; the
// retried gc must leave what an uninterrupted one does (no journal), with every chunk still found.
func TestGCFoldsChunkJournal(t *testing.T) {
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	one := bigChunks(t, s, "one", 7)
	two := bigChunks(t, s, "two", 8)
	journal := filepath.Join(root, "chunk-index.journal")
	if _, err := os.Stat(journal); err != nil {
		t.Fatalf("no journal after the second layer: %v", err)
	}
	if res, err := s.GC(context.Background()); err != nil || res.Layers != 0 {
		t.Fatalf("gc: %+v, %v", res, err)
	}
	if _, err := os.Stat(journal); err == nil {
		t.Fatal("gc left the chunk journal")
	}
	for when, chunks := range map[string][]chunked.Entry{"one": one, "two": two} {
		if e, ok := findsAll(teststore.Open(t, teststore.At(root)), chunks); !ok {
			t.Fatalf("after gc: chunk %s of %s not found", e.ChunkDigest, when)
		}
	}
}
