package store_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// TestFsckRepairKeepsNames damages the only object of a locally imported image: repair removes
// the object but keeps the image and its only name, reports what it could not restore, and a
// Refetcher (here: importing the layer's tar again, as a pull would fetch it) restores it.
func TestFsckRepairKeepsNames(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	content := []byte("the only file of a local image")
	tarBytes := tarOf(t, map[string][]byte{"a": content})
	img := teststore.Named(t, s, "local", tarBytes)
	p, _ := s.ObjectPath(digest.FromBytes(content))
	os.Chmod(p, 0o644)
	if err := os.WriteFile(p, []byte("bit rot"), 0o444); err != nil {
		t.Fatal(err)
	}

	rep, err := s.Fsck(ctx, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.ResolveImage(ctx, "local"); err != nil {
		t.Fatalf("repair removed the only name of the image: %v", err)
	}
	if len(rep.Unrepaired) == 0 || !strings.Contains(strings.Join(rep.Unrepaired, "\n"), "local") {
		t.Fatalf("repair does not report the image it could not restore, by name: %+v", rep)
	}
	if rep, _ := s.Fsck(ctx, false); rep.Clean() {
		t.Fatal("fsck calls a store clean whose image lacks an object")
	}

	// A re-fetch restores the object; the store is clean again and the layer exports.
	var refetched []digest.Digest
	refetch := func(ctx context.Context, s *store.Store, got store.Image, l digest.Digest) error {
		refetched = append(refetched, l)
		_, err := layer.Import(ctx, s, bytes.NewReader(tarBytes), layer.Options{DiffID: l, Refill: true})
		return err
	}
	// Without a recorded source there is nothing to re-fetch from.
	rep, err = s.FsckWith(ctx, store.FsckOptions{Repair: true, Refetch: refetch})
	if err != nil || len(refetched) != 0 || len(rep.Unrepaired) == 0 {
		t.Fatalf("re-fetch of an image without a source: %+v %v (called for %v)", rep, err, refetched)
	}
	recordSource(t, s, img.ID, "registry.example/local@"+img.ID.String())
	rep, err = s.FsckWith(ctx, store.FsckOptions{Repair: true, Refetch: refetch})
	if err != nil || len(refetched) != 1 || refetched[0] != img.Layers[0] || len(rep.Unrepaired) != 0 {
		t.Fatalf("re-fetch: %+v %v (called for %v)", rep, err, refetched)
	}
	if rep, err := s.Fsck(ctx, false); err != nil || !rep.Clean() {
		t.Fatalf("after the re-fetch: %v %v", rep.Problems, err)
	}
	if !s.HasObject(digest.FromBytes(content)) {
		t.Fatal("object not restored")
	}
}

// recordSource rewrites an image record with a source, as a pull would have written it.
func recordSource(t *testing.T, s *store.Store, id digest.Digest, src string) {
	t.Helper()
	ctx := context.Background()
	m, _ := s.ImageManifest(ctx, id)
	c, _ := s.ImageConfig(ctx, id)
	x, err := s.Lock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer x.Unlock()
	dir := filepath.Join(s.Root(), "images", id.Encoded())
	os.Chmod(dir, 0o700)
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	img, err := s.PutImage(ctx, m, c, store.WithSource(src))
	if err != nil || img.Source != src {
		t.Fatalf("PutImage with a source: %+v %v", img, err)
	}
	if got, err := s.Image(ctx, id); err != nil || got.Source != src {
		t.Fatalf("source not recorded: %+v %v", got, err)
	}
}

// TestFsckRepairDanglingRef: a ref to an image that does not exist names nothing; repair removes
// it (gc could not run past it), and only it.
func TestFsckRepairDanglingRef(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	teststore.Named(t, s, "kept", tarOf(t, map[string][]byte{"a": []byte("kept")}))
	gone := digest.FromString("no such image")
	if err := os.WriteFile(filepath.Join(s.Root(), "refs", "dangling"), []byte(gone.String()+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err == nil {
		t.Fatal("gc ran past a dangling ref")
	}
	rep, err := s.Fsck(ctx, true)
	if err != nil || rep.Repaired != 1 || len(rep.Unrepaired) != 0 {
		t.Fatalf("repair: %+v %v", rep, err)
	}
	if refs, _ := s.Refs(ctx); len(refs) != 1 || refs["kept"] == "" {
		t.Fatalf("refs after repair: %v", refs)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
}

// TestFsckDeepVariants: a variant whose content no longer hashes to its object is reported by
// fsck --deep (not by the plain fsck when its size is right), and repair removes it; a variant
// of the wrong size is found without --deep. A variant named the old way is counted, not judged.
func TestFsckDeepVariants(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	content := []byte("variant content")
	teststore.Named(t, s, "img", tarOf(t, map[string][]byte{"a": content}))
	obj := digest.FromBytes(content)
	write := func(key string, data []byte) string {
		p, err := s.VariantPath(obj, digest.FromString(key))
		if err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(filepath.Dir(p), 0o700)
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	write("good", content)
	same := write("same size", bytes.ToUpper(content))
	legacy := filepath.Join(s.Root(), "variants", "ab", strings.Repeat("c", 62))
	os.MkdirAll(filepath.Dir(legacy), 0o700)
	os.WriteFile(legacy, []byte("old"), 0o644)

	if rep, err := s.Fsck(ctx, false); err != nil || !rep.Clean() || rep.Variants != 3 || rep.LegacyVariants != 1 {
		t.Fatalf("plain fsck: %+v %v", rep, err)
	}
	rep, err := s.FsckWith(ctx, store.FsckOptions{Deep: true})
	if err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], same) {
		t.Fatalf("fsck --deep: %+v %v", rep.Problems, err)
	}
	longer := write("other size", append(content, '!'))
	if rep, _ := s.Fsck(ctx, false); len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], longer) {
		t.Fatalf("plain fsck misses a variant of the wrong size: %v", rep.Problems)
	}
	rep, err = s.FsckWith(ctx, store.FsckOptions{Deep: true, Repair: true})
	if err != nil || rep.Repaired != 2 {
		t.Fatalf("fsck --deep --repair: %+v %v", rep, err)
	}
	for _, p := range []string{same, longer} {
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("changed variant %s not removed: %v", p, err)
		}
	}
	if rep, err := s.FsckWith(ctx, store.FsckOptions{Deep: true}); err != nil || !rep.Clean() {
		t.Fatalf("after repair: %v %v", rep.Problems, err)
	}
}
