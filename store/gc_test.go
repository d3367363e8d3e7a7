package store_test

import (
	"context"
	"errors"
	"math/rand"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// tarOf writes the files among a, b, c and big, in that order.
func tarOf(t *testing.T, files map[string][]byte) []byte {
	var entries []tartest.Entry
	for _, name := range []string{"a", "b", "c", "big"} {
		if data, ok := files[name]; ok {
			entries = append(entries, tartest.Bytes(name, data))
		}
	}
	return tartest.Tar(t, entries...)
}

func TestUsageGCFsck(t *testing.T) {
	ctx := context.Background()
	// No lock held across the test: gc and fsck --repair take the exclusive lock themselves.
	s := teststore.Open(t)
	big := make([]byte, 300<<10)
	rand.New(rand.NewSource(1)).Read(big)
	shared := []byte("shared content")
	img1 := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": shared, "b": []byte("only in one"), "big": big}))
	teststore.Named(t, s, "two", tarOf(t, map[string][]byte{"a": shared, "c": []byte("only in two!")}))

	u, err := s.Usage(ctx, store.WithUniqueBytes())
	if err != nil {
		t.Fatal(err)
	}
	if u.Objects != 4 || u.ObjectBytes != int64(len(shared)+len("only in one")+len(big)+len("only in two!")) {
		t.Fatalf("usage %+v", u)
	}
	for _, iu := range u.Images {
		want := int64(len("only in two!"))
		if iu.Image.ID == img1.ID {
			want = int64(len("only in one") + len(big))
		}
		if iu.Unique != want {
			t.Errorf("image %v unique %d, want %d", iu.Names, iu.Unique, want)
		}
	}

	// A large file's chunks are findable by chunk digest.
	toc, _ := s.LayerTOC(ctx, img1.Layers[0])
	found := false
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeChunk {
			loc, err := s.FindChunk(ctx, digest.Digest(e.ChunkDigest), e.ChunkSize)
			if err != nil || loc.Offset != e.ChunkOffset {
				t.Fatalf("FindChunk(%s) = %+v, %v", e.ChunkDigest, loc, err)
			}
			found = true
		}
	}
	if !found {
		t.Log("big file was a single chunk; FindChunk not exercised on chunk entries")
	}

	// gc keeps everything named; dropping "one" frees its unique objects only.
	if r, err := s.GC(ctx); err != nil || r.Objects != 0 {
		t.Fatalf("gc with all images named: %+v %v", r, err)
	}
	unlock, _ := s.RLock(ctx)
	if err := s.DeleteRef(ctx, "one"); err != nil {
		t.Fatal(err)
	}
	unlock()
	r, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if r.Images != 1 || r.Layers != 1 || r.Objects != 2 {
		t.Fatalf("gc after dropping one: %+v", r)
	}
	if !s.HasObject(digest.FromBytes(shared)) {
		t.Fatal("gc removed an object image two needs")
	}

	// fsck finds a damaged object; repair removes the object but never the image or its name,
	// and says what it could not restore (more in TestFsckRepairKeepsNames).
	rep, err := s.Fsck(ctx, false)
	if err != nil || !rep.Clean() {
		t.Fatalf("fsck of a good store: %v %v", rep.Problems, err)
	}
	p, _ := s.ObjectPath(digest.FromBytes(shared))
	os.Chmod(p, 0o644)
	os.WriteFile(p, []byte("tampered"), 0o444)
	rep, _ = s.Fsck(ctx, false)
	if rep.Clean() {
		t.Fatal("fsck missed a damaged object")
	}
	rep, err = s.Fsck(ctx, true)
	if err != nil || rep.Repaired == 0 || len(rep.Unrepaired) == 0 {
		t.Fatalf("fsck --repair: %+v %v", rep, err)
	}
	if _, err := s.ResolveImage(ctx, "two"); err != nil {
		t.Fatalf("repair removed image two or its name: %v", err)
	}
	if s.HasObject(digest.FromBytes(shared)) {
		t.Fatal("repair kept the damaged object")
	}
}

func TestWriteNeedsLock(t *testing.T) {
	s := teststore.Open(t, teststore.Synced())
	if _, err := s.Ingest(context.Background(), "", -1); err == nil {
		t.Fatal("ingest without a lock succeeded")
	}
}

func TestRefNames(t *testing.T) {
	s := teststore.Open(t, teststore.Synced(), teststore.Locked())
	for _, bad := range []string{"", "has space", "new\nline", string(make([]byte, 300))} {
		if err := s.SetRef(context.Background(), bad, digest.FromString("x")); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("SetRef(%q) = %v, want ErrInvalid", bad, err)
		}
	}
	if err := s.SetRef(context.Background(), "registry.example/a/b:tag", digest.FromString("x")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("SetRef to a missing image = %v, want ErrNotFound", err)
	}
}

func TestExclusiveWhileSharedRefused(t *testing.T) {
	s := teststore.Open(t, teststore.Synced(), teststore.Locked()) // holds the shared lock
	if _, err := s.GC(context.Background()); err == nil {
		t.Fatal("gc through a handle holding the shared lock did not refuse (it would deadlock)")
	}
}
