package store_test

import (
	"context"
	"math/rand"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestGCPrunesChunkIndex: gc that deletes a layer drops its records from the chunk index
// itself, so the next pull's first lookup finds the index current and does not rewrite it
// (before, every pull after such a gc rewrote the whole file, a cost that grows with the store).
func TestGCPrunesChunkIndex(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	bigs := map[string][]byte{}
	chunks := map[string][]chunked.Entry{}
	for i, name := range []string{"keep", "drop"} {
		big := make([]byte, 4<<20)
		rand.New(rand.NewSource(int64(11 + i))).Read(big)
		bigs[name] = big
		img := teststore.Named(t, s, name, tarOf(t, map[string][]byte{"big": big}))
		toc, err := s.LayerTOC(ctx, img.Layers[0])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range toc.Entries {
			if e.Type == chunked.TypeChunk {
				chunks[name] = append(chunks[name], e)
			}
		}
		if len(chunks[name]) < 2 {
			t.Fatalf("%s: a 4 MiB random file gave %d chunk entries", name, len(chunks[name]))
		}
	}
	unlock, _ := s.RLock(ctx)
	s.DeleteRef(ctx, "drop")
	unlock()
	if res, err := s.GC(ctx); err != nil || res.Layers != 1 {
		t.Fatalf("gc: %+v, %v", res, err)
	}
	index := filepath.Join(root, "chunk-index")
	before := statIno(t, index)
	if _, err := os.Stat(index + ".journal"); err == nil {
		t.Error("the journal survived gc's rewrite of the index")
	}
	s = teststore.Open(t, teststore.At(root))
	for name, want := range map[string]bool{"keep": true, "drop": false} {
		for _, e := range chunks[name] {
			_, err := s.FindChunk(ctx, digest.Digest(e.ChunkDigest), e.ChunkSize)
			if (err == nil) != want {
				t.Fatalf("%s: FindChunk(%s): %v, want found %v", name, e.ChunkDigest, err, want)
			}
		}
	}
	if after := statIno(t, index); after != before {
		t.Errorf("the first lookup after gc rewrote the chunk index (%v, then %v)", before, after)
	}
	if fi, _ := os.Stat(index); fi.Size() >= int64(len(chunks["keep"])+len(chunks["drop"]))*80 {
		t.Errorf("chunk index of %d bytes still holds the dropped layer's records", fi.Size())
	}
}

// statIno is the inode and size of p: a rename over it changes the inode.
func statIno(t *testing.T, p string) [2]uint64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return [2]uint64{fi.Sys().(*syscall.Stat_t).Ino, uint64(fi.Size())}
}
