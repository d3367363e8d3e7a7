package layer_test

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// loadLayer opens a reference blob with its descriptor's annotations.
func loadLayer(t *testing.T, name string) *chunked.Layer {
	t.Helper()
	dir := testdata(t, "zstd-chunked")
	var desc chunked.Descriptor
	b, err := os.ReadFile(filepath.Join(dir, name+".descriptor.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, name+".zstd-chunked"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	l, _, err := chunked.Open(f, desc.Size, desc.Annotations)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

type fakeHave struct {
	objects map[digest.Digest]bool
	chunks  map[digest.Digest]store.ChunkLocation
}

func (h fakeHave) HasObject(d digest.Digest) bool { return h.objects[d] }
func (h fakeHave) FindChunk(_ context.Context, d digest.Digest, _ int64) (store.ChunkLocation, error) {
	l, ok := h.chunks[d]
	if !ok {
		return l, errdefs.ErrNotFound
	}
	return l, nil
}

// compressedFileBytes sums the compressed frames of every non-empty regular file.
func compressedFileBytes(toc *chunked.TOC) int64 {
	var n int64
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeReg && e.Size > 0 {
			n += e.EndOffset - e.Offset
		}
	}
	return n
}

func TestPlanEmptyStoreFetchesEachContentOnce(t *testing.T) {
	l := loadLayer(t, "mixed")
	p := layer.MakePlan(context.Background(), l.Files, fakeHave{})
	if p.SkippedBytes+p.FetchBytes != compressedFileBytes(l.TOC) {
		t.Fatalf("skipped %d + fetch %d != file bytes %d", p.SkippedBytes, p.FetchBytes, compressedFileBytes(l.TOC))
	}
	seen := map[digest.Digest]bool{}
	for _, f := range p.Files {
		if seen[f.File.Entry.Digest] {
			t.Fatalf("content %s planned twice", f.File.Entry.Digest)
		}
		seen[f.File.Entry.Digest] = true
		if len(f.Pieces) != len(f.File.Entry.Chunks) {
			t.Fatalf("%s: %d pieces for %d chunks", f.File.Entry.Name, len(f.Pieces), len(f.File.Entry.Chunks))
		}
	}
	if p.ZeroChunks == 0 {
		t.Fatal("mixed has a zeros chunk; the plan found none")
	}
	if p.ReusedFiles != 0 {
		t.Fatalf("reused %d files from an empty store", p.ReusedFiles)
	}
	var remote int64
	for _, r := range p.Ranges() {
		remote += r.Length
	}
	if remote != p.FetchBytes {
		t.Fatalf("ranges cover %d, plan says fetch %d", remote, p.FetchBytes)
	}
}

func TestPlanReusesObjectsAndChunks(t *testing.T) {
	l := loadLayer(t, "mixed")
	have := fakeHave{objects: map[digest.Digest]bool{}, chunks: map[digest.Digest]store.ChunkLocation{}}
	for _, e := range l.TOC.Entries {
		switch {
		case e.Type == chunked.TypeReg && e.Name == "usr/bin/big-text":
			// the file is not present, but all its chunks are, elsewhere
		case e.Type == chunked.TypeReg && e.Digest != "":
			have.objects[digest.Digest(e.Digest)] = true
		}
		if e.Name == "usr/bin/big-text" {
			have.chunks[digest.Digest(e.ChunkDigest)] = store.ChunkLocation{Object: digest.Digest(e.Digest), Offset: 7}
		}
	}
	p := layer.MakePlan(context.Background(), l.Files, have)
	if p.FetchBytes != 0 || len(p.Ranges()) != 0 {
		t.Fatalf("fetch %d bytes in %d ranges, want nothing", p.FetchBytes, len(p.Ranges()))
	}
	if len(p.Files) != 1 || p.Files[0].File.Entry.Name != "usr/bin/big-text" {
		t.Fatalf("want one file assembled from local chunks, got %+v", p.Files)
	}
	for _, pc := range p.Files[0].Pieces {
		if pc.Kind != layer.PieceLocal || pc.Local.Offset != 7 {
			t.Fatalf("piece %+v not local", pc)
		}
	}
	if p.SkippedBytes != compressedFileBytes(l.TOC) {
		t.Fatalf("skipped %d, want all %d", p.SkippedBytes, compressedFileBytes(l.TOC))
	}
}
