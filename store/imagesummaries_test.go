package store_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
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
		if got.ID != want.Image.ID || !slices.Equal(got.Names, want.Names) || got.Logical != want.Logical ||
			!got.Created.Equal(want.Image.Created) || got.Layers != len(want.Image.Layers) {
			t.Errorf("image %d: ImageSummaries %v %v %d, Usage %v %v %d", i, got.ID, got.Names, got.Logical,
				want.Image.ID, want.Names, want.Logical)
		}
		// Summaries and Usage share logicalSize: the sizes are checked against the files too.
		wantLogical := map[string]int{"one": len(shared) + len("only in one"), "two": len(shared) + len("only in two, longer")}
		if len(got.Names) != 1 || got.Logical != int64(wantLogical[got.Names[0]]) {
			t.Errorf("image %d %v: logical %d, want its files' %v", i, got.Names, got.Logical, wantLogical)
		}
	}
}

// TestImageSummariesCached: the listing writes the summaries file and then reads it (a row
// changed by hand shows, and fsck reports it; repair removes it); recording an image adds its row;
// an image removed since, or a damaged file, makes the listing write the file anew.
func TestImageSummariesCached(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	path := filepath.Join(s.Root(), "image-summaries")
	one := teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("first")}))
	two := teststore.Named(t, s, "two", tarOf(t, map[string][]byte{"a": []byte("second, longer")}))
	want := listed(t, s)
	if len(want) != 2 {
		t.Fatalf("listed %d images, want 2", len(want))
	}
	if rows := summaryRows(t, path); rows != 2 {
		t.Fatalf("summaries file has %d rows after listing two images", rows)
	}

	// The listing reads the file: a row changed by hand shows. fsck finds it; repair removes it.
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	logical := strconv.FormatInt(want[one.ID].Logical, 10)
	forged := strings.Replace(string(b), " "+logical+"\n", " 999999\n", 1)
	if forged == string(b) {
		t.Fatalf("no row of %s ends with its logical size %s:\n%s", one.ID, logical, b)
	}
	writeForged(t, path, forged)
	if got := listed(t, s); got[one.ID].Logical != 999999 {
		t.Fatalf("listing after the file changed: logical %d, want the file's 999999", got[one.ID].Logical)
	}
	r, err := s.Fsck(ctx, false)
	if err != nil || r.Clean() || !strings.Contains(strings.Join(r.Problems, "\n"), "image summaries") {
		t.Fatalf("fsck of a forged summary row: %v, problems %q", err, r.Problems)
	}
	if r, err = s.Fsck(ctx, true); err != nil || r.Repaired == 0 {
		t.Fatalf("fsck --repair: %v, %+v", err, r)
	}
	if got := listed(t, s); got[one.ID].Logical != want[one.ID].Logical {
		t.Fatalf("listing after repair: logical %d, want %d", got[one.ID].Logical, want[one.ID].Logical)
	}
	if r, err = s.Fsck(ctx, false); err != nil || !r.Clean() {
		t.Fatalf("fsck after repair and a listing: %v, problems %q", err, r.Problems)
	}

	// A damaged file is ignored by the listing and written anew; fsck reports it until then.
	writeForged(t, path, "kura-image-summaries 1\nsha256:zz - 1 2\nend 1\n")
	if r, err = s.Fsck(ctx, false); err != nil || r.Clean() {
		t.Fatalf("fsck of a damaged summaries file: %v, clean", err)
	}
	if got := listed(t, s); !sameSummary(got[two.ID], want[two.ID]) {
		t.Fatalf("listing with a damaged file: %+v, want %+v", got[two.ID], want[two.ID])
	}
	if rows := summaryRows(t, path); rows != 2 {
		t.Fatalf("summaries file has %d rows after listing over a damaged one", rows)
	}

	// A removed image leaves the listing and the file; a new one enters both.
	if _, err := s.RemoveImage(ctx, "one", false); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	three := teststore.Named(t, s, "three", tarOf(t, map[string][]byte{"b": []byte("third")}))
	if rows := summaryRows(t, path); rows != 3 {
		t.Fatalf("summaries file has %d rows after storing three; want one's left-over row, two's and three's", rows)
	}
	got := listed(t, s)
	if _, ok := got[one.ID]; ok || len(got) != 2 || !sameSummary(got[two.ID], want[two.ID]) || got[three.ID].Logical != int64(len("third")) {
		t.Fatalf("listing after removing one and storing three: %+v", got)
	}
	if rows := summaryRows(t, path); rows != 2 {
		t.Fatalf("summaries file has %d rows for two images", rows)
	}
}

// TestImageSummariesDamagedWithoutImages: a damaged file is written anew even when no image is
// missing from it (there are none), so that fsck stops reporting it.
func TestImageSummariesDamagedWithoutImages(t *testing.T) {
	s := teststore.Open(t)
	path := filepath.Join(s.Root(), "image-summaries")
	writeForged(t, path, "kura-image-summaries 1\nend 7\n")
	if got := listed(t, s); len(got) != 0 {
		t.Fatalf("listed %d images in an empty store", len(got))
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "kura-image-summaries 1\nend 0\n" {
		t.Fatalf("summaries file after the listing: %q, %v", b, err)
	}
	if r, err := s.Fsck(context.Background(), false); err != nil || !r.Clean() {
		t.Fatalf("fsck: %v, problems %q", err, r.Problems)
	}
}

// listed is ImageSummaries by ID, names left out.
func listed(t *testing.T, s *store.Store) map[digest.Digest]store.ImageSummary {
	t.Helper()
	list, err := s.ImageSummaries(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	out := map[digest.Digest]store.ImageSummary{}
	for _, is := range list {
		is.Names = nil
		out[is.ID] = is
	}
	return out
}

// summaryRows counts the image rows of the summaries file.
func summaryRows(t *testing.T, path string) int {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "\nsha256:")
}

func writeForged(t *testing.T, path, content string) {
	t.Helper()
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o444); err != nil {
		t.Fatal(err)
	}
}

func sameSummary(a, b store.ImageSummary) bool {
	return a.ID == b.ID && a.Created.Equal(b.Created) && a.Layers == b.Layers && a.Logical == b.Logical
}
