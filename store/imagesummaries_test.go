package store_test

import (
	"context"
	"slices"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestImageSummaries: the list `kura images` shows has Usage's images, names and logical sizes,
// read from the records alone (Unique is Usage's alone).
func TestImageSummaries(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	shared := []byte("shared content")
	teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": shared, "b": []byte("only in one")}))
	teststore.Named(t, s, "two", tarOf(t, map[string][]byte{"a": shared, "c": []byte("only in two, longer")}))
	list, err := s.ImageSummaries(ctx)
	if err != nil {
		t.Fatal(err)
	}
	u, err := s.Usage(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || len(u.Images) != 2 {
		t.Fatalf("ImageSummaries gave %d images, Usage %d; want 2", len(list), len(u.Images))
	}
	for i, got := range list {
		want := u.Images[i]
		if got.Image.ID != want.Image.ID || !slices.Equal(got.Names, want.Names) || got.Logical != want.Logical {
			t.Errorf("image %d: ImageSummaries %v %v %d, Usage %v %v %d", i, got.Image.ID, got.Names, got.Logical,
				want.Image.ID, want.Names, want.Logical)
		}
		if got.Logical <= int64(len(shared)) || got.Unique != 0 {
			t.Errorf("image %d: logical %d, unique %d", i, got.Logical, got.Unique)
		}
	}
}
