package store_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestGCAfterKilledRemoval: a gc killed after renaming an image's and a layer's directory into
// tmp/ (to delete them) and before deleting them leaves them there. When the same image is stored
// again before the next gc cleans tmp/, removing it (rmi's drop, then gc) must not trip over the
// leftovers of the same names.
func TestGCAfterKilledRemoval(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(root))
	tar := tarOf(t, map[string][]byte{"a": []byte("content of a")})
	img := teststore.Image(t, s, tar)
	// What the kill leaves: the directories, still full, under the names removal gives them.
	for _, d := range []string{"rm-images-" + img.ID.Encoded(), "rm-layers-" + img.Layers[0].Encoded()} {
		if err := os.MkdirAll(filepath.Join(root, "tmp", d), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "tmp", d, "left"), []byte("x"), 0o444); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.GC(ctx)
	if err != nil {
		t.Fatalf("gc of an unnamed image over a killed gc's leftovers: %v", err)
	}
	if res.Images != 1 || res.Layers != 1 || res.Objects != 1 {
		t.Fatalf("gc removed %+v, want the image, its layer and its object", res)
	}
	ents, err := os.ReadDir(filepath.Join(root, "tmp"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), "o-") {
			t.Errorf("gc left tmp/%s", e.Name())
		}
	}
	rep, err := s.Fsck(ctx, false)
	if err != nil || !rep.Clean() {
		t.Fatalf("fsck after gc: %v %v", rep.Problems, err)
	}
}
