package teststore_test

import (
	"context"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// Named records an image of the layers and names it; Locked holds the read lock, so the
// exclusive lock cannot be taken through the same handle.
func TestNamedImage(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root), teststore.Locked())
	if s.Root() != root {
		t.Fatalf("store at %s, want %s", s.Root(), root)
	}
	img := teststore.Named(t, s, "one", tartest.Tar(t, tartest.File("a", "alpha")), tartest.Tar(t, tartest.File("b", "bravo")))
	if len(img.Layers) != 2 {
		t.Fatalf("image %+v, want two layers", img)
	}
	if id, err := s.Ref(ctx, "one"); err != nil || id != img.ID {
		t.Fatalf("ref one = %s, %v; want %s", id, err, img.ID)
	}
	if _, err := s.Lock(ctx); err == nil {
		t.Fatal("the exclusive lock was taken while Locked holds the shared one")
	}
}
