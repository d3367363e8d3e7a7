package store_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

// TestBatchScratch: a batch's scratch files live in the store's temp directory and are gone
// once the batch ends, committed or aborted, whether or not the caller dropped them.
func TestBatchScratch(t *testing.T) {
	s := lockedStore(t)
	for _, end := range []string{"commit", "abort"} {
		b := s.NewBatch()
		kept, err := b.Scratch()
		if err != nil {
			t.Fatal(err)
		}
		kept.Close()
		dropped, err := b.Scratch()
		if err != nil {
			t.Fatal(err)
		}
		dropped.Close()
		if err := b.DropScratch(dropped.Name()); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(dropped.Name()); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: a dropped scratch file is still there: %v", end, err)
		}
		if _, err := os.Stat(kept.Name()); err != nil {
			t.Fatalf("%s: scratch file gone before the batch ended: %v", end, err)
		}
		if end == "commit" {
			err = b.Commit(context.Background())
		} else {
			err = b.Abort()
		}
		if err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(kept.Name()); !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("%s: the batch left its scratch file: %v", end, err)
		}
	}
}

// TestBatchPutLayerChecksObjects: recording a layer checks that every object its TOC names is
// stored, whether the batch wrote it, found it (Stored) or neither; a layer naming an object
// that is not stored is refused, even one the batch was asked about, and nothing is recorded.
// (Without fs-verity, where reading every object for its digest would find the absent one
// anyway.)
func TestBatchPutLayerChecksObjects(t *testing.T) {
	ctx := context.Background()
	s := lockedStore(t)
	b, old, fresh := storeTwo(t, s)
	od, err := s.OpenObjectDir()
	if err != nil {
		t.Fatal(err)
	}
	defer od.Close()
	absent := []byte("nowhere")
	if !b.Stored(od, digest.FromBytes(old)) || b.Stored(od, digest.FromBytes(absent)) {
		t.Fatal("Stored: wrong answer")
	}
	zst := store.CompressMetadata([]byte("{}"))
	bad := store.Layer{DiffID: digest.FromString("bad")}
	if err := b.PutLayerCompressed(ctx, bad, tocOf(old, fresh, absent), zst, zst); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("a TOC naming an absent object: %v, want ErrNotFound", err)
	}
	if s.HasLayer(bad.DiffID) {
		t.Fatal("the layer was recorded")
	}
	good := store.Layer{DiffID: digest.FromString("good")}
	if err := b.PutLayerCompressed(ctx, good, tocOf(old, fresh), zst, zst); err != nil {
		t.Fatal(err)
	}
	if !s.HasLayer(good.DiffID) {
		t.Fatal("the layer was not recorded")
	}
}

// TestBatchPutLayerVerity: a layer recorded from a batch gets the fs-verity digest of every
// object, those the batch wrote (computed while they streamed in) and those stored before.
func TestBatchPutLayerVerity(t *testing.T) {
	ctx := context.Background()
	s := lockedStore(t, store.WithVerity())
	b, old, fresh := storeTwo(t, s)
	l := store.Layer{DiffID: digest.FromString("layer")}
	if err := b.PutLayer(ctx, l, tocOf(old, fresh), nil); err != nil {
		t.Fatal(err)
	}
	vs, err := s.VerityDigests(ctx, l.DiffID)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range [][]byte{old, fresh} {
		want, err := verity.FromReader(bytes.NewReader(c))
		if err != nil {
			t.Fatal(err)
		}
		if got := vs[digest.FromBytes(c)]; got != want {
			t.Fatalf("fs-verity digest of %q: %s, want %s", c, got, want)
		}
	}
}

// storeTwo stores one content directly and another through a batch it commits and returns.
func storeTwo(t *testing.T, s *store.Store) (b *store.Batch, old, fresh []byte) {
	t.Helper()
	ctx := context.Background()
	old, fresh = []byte("stored before"), []byte("written by the batch")
	if _, err := store.WriteObject(ctx, s, bytes.NewReader(old), "", -1); err != nil {
		t.Fatal(err)
	}
	b = s.NewBatch()
	if _, err := store.WriteObject(ctx, b, bytes.NewReader(fresh), "", -1); err != nil {
		t.Fatal(err)
	}
	if err := b.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	return b, old, fresh
}

// tocOf is the entries of one regular file per content.
func tocOf(contents ...[]byte) []layerfs.Entry {
	var entries []layerfs.Entry
	for i, c := range contents {
		d := digest.FromBytes(c)
		entries = append(entries, layerfs.Entry{Type: layerfs.TypeReg, Name: string(rune('a' + i)),
			Size: int64(len(c)), Digest: d, Chunks: []layerfs.Chunk{{Size: int64(len(c)), Digest: d}}})
	}
	return entries
}

// lockedStore opens a store and holds its shared lock for the test.
func lockedStore(t *testing.T, opts ...store.Option) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir(), append(opts, store.WithoutSync())...)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	return s
}
