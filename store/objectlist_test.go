package store_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// listPath is where a layer's object list lives (docs/design.md).
func listPath(s *store.Store, l digest.Digest) string {
	return filepath.Join(s.Root(), "layers", l.Encoded(), "objects")
}

// tocRefs are the objects a TOC names with their sizes, as the list must give them.
func tocRefs(t *testing.T, toc *chunked.TOC) []store.ObjectRef {
	t.Helper()
	entries, err := chunked.DecodeEntries(toc)
	if err != nil {
		t.Fatal(err)
	}
	size := map[digest.Digest]int64{}
	for _, e := range entries {
		if e.HasContent() {
			size[e.Digest] = e.Size
		}
	}
	objs, err := store.TOCObjects(toc)
	if err != nil {
		t.Fatal(err)
	}
	out := make([]store.ObjectRef, len(objs))
	for i, d := range objs {
		out[i] = store.ObjectRef{Digest: d, Size: size[d]}
	}
	return out
}

// TestObjectListMatchesVectors imports the conformance vectors' tars and checks each layer's
// object list against the objects the reference compressor's TOC names.
func TestObjectListMatchesVectors(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t, teststore.Locked())
	for _, name := range []string{"mixed", "real"} {
		tarBytes, err := os.ReadFile(filepath.Join("..", "testdata", "zstd-chunked", name+".tar"))
		if err != nil {
			t.Fatal(err)
		}
		tocJSON, err := os.ReadFile(filepath.Join("..", "testdata", "zstd-chunked", name+".toc.json"))
		if err != nil {
			t.Fatal(err)
		}
		toc, err := chunked.ParseTOC(tocJSON)
		if err != nil {
			t.Fatal(err)
		}
		img := teststore.Image(t, s, tarBytes)
		l := img.Layers[0]
		if _, err := os.Stat(listPath(s, l)); err != nil {
			t.Fatalf("%s: no object list written with the layer: %v", name, err)
		}
		got, err := s.LayerObjectRefs(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		if want := tocRefs(t, toc); len(want) == 0 || !slices.Equal(got, want) {
			t.Errorf("%s: object list %d objects, reference TOC %d (or sizes differ)", name, len(got), len(want))
		}
	}
}

// TestObjectListImported checks the list of an imported image with duplicate content, a
// hardlink and empty files against the store's own TOC, and that fsck finds it clean.
func TestObjectListImported(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "img", tartest.Tar(t,
		tartest.Bytes("a", []byte("same")), tartest.Bytes("b", []byte("same")),
		tartest.Bytes("empty", nil), tartest.Bytes("c", []byte(strings.Repeat("c", 100<<10))),
		tartest.Hardlink("d", "c")))
	toc, err := s.LayerTOC(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.LayerObjectRefs(ctx, img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	if want := tocRefs(t, toc); len(want) != 2 || !slices.Equal(got, want) {
		t.Fatalf("object list %v, TOC names %v", got, want)
	}
	rep, err := s.Fsck(ctx, false)
	if err != nil || !rep.Clean() || rep.LegacyLayers != 0 {
		t.Fatalf("fsck: %+v, %v", rep, err)
	}
}

// damageList replaces a layer's object list with what damage makes of its bytes (nil: deletes
// it), through the read-only directory as an unprivileged user could not.
func damageList(t *testing.T, s *store.Store, l digest.Digest, damage func([]byte) []byte) {
	t.Helper()
	p := listPath(s, l)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Dir(p)
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o500)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	if b = damage(b); b != nil {
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
	}
}

// TestObjectListDamage: a missing or corrupt list is found by fsck, never makes gc delete an
// object the layer needs (gc falls back to the TOC and writes the list again), and fsck --repair
// rewrites it.
func TestObjectListDamage(t *testing.T) {
	damages := map[string]func([]byte) []byte{
		"missing":   func([]byte) []byte { return nil },
		"empty":     func([]byte) []byte { return []byte{} },
		"truncated": func(b []byte) []byte { return b[:len(b)-5] },
		// One record fewer, of a valid length: only the checksum finds it.
		"record cut": func(b []byte) []byte { return append(b[:len(b)-44:len(b)-44], b[len(b)-4:]...) },
		"bit flip":   func(b []byte) []byte { b[20] ^= 1; return b },
		"garbage":    func(b []byte) []byte { return []byte(strings.Repeat("x", len(b))) },
	}
	for name, damage := range damages {
		t.Run(name, func(t *testing.T) {
			for _, repair := range []bool{false, true} {
				checkDamage(t, name, damage, repair)
			}
		})
	}
}

// checkDamage damages the list of a named image's layer next to an unnamed image (gc removes
// that one and its objects), then runs gc (or fsck --repair) and checks what stays.
func checkDamage(t *testing.T, name string, damage func([]byte) []byte, repair bool) {
	ctx := context.Background()
	s := teststore.Open(t)
	big := []byte(strings.Repeat("big", 50<<10))
	keep := teststore.Named(t, s, "keep", tarOf(t, map[string][]byte{"a": []byte("kept a"), "b": []byte("kept b"), "big": big}))
	teststore.Image(t, s, tarOf(t, map[string][]byte{"c": []byte("garbage c")}))
	l := keep.Layers[0]
	damageList(t, s, l, damage)

	rep, err := s.Fsck(ctx, false)
	if err != nil {
		t.Fatal(err)
	}
	if name == "missing" {
		if !rep.Clean() || rep.LegacyLayers != 1 {
			t.Fatalf("fsck of a layer without a list: %+v, want clean with one legacy layer", rep)
		}
	} else if rep.Clean() || !strings.Contains(strings.Join(rep.Problems, "\n"), "object list") {
		t.Fatalf("fsck did not report the %s list: %+v", name, rep)
	}

	if repair {
		if rep, err = s.Fsck(ctx, true); err != nil || len(rep.Unrepaired) != 0 {
			t.Fatalf("fsck --repair: %+v, %v", rep, err)
		}
	} else {
		res, err := s.GC(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if res.Objects != 1 || res.Layers != 1 || res.BytesFreed != int64(len("garbage c")) {
			t.Fatalf("gc removed %+v, want the unnamed image's layer and object only", res)
		}
	}
	toc, err := s.LayerTOC(ctx, l)
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range tocRefs(t, toc) {
		if !s.HasObject(o.Digest) {
			t.Fatalf("object %s of the named image's layer is gone", o.Digest)
		}
	}
	// Either way the list is written again from the TOC.
	if rep, err = s.Fsck(ctx, false); err != nil || !rep.Clean() || rep.LegacyLayers != 0 {
		t.Fatalf("fsck after: %+v, %v", rep, err)
	}
}

// TestUsageSharedLayers: df's unique bytes from object lists, with a layer two images share, an
// object an image's own layer repeats from the shared one, and a layer whose list is missing
// (read from its TOC instead).
func TestUsageSharedLayers(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	base := tarOf(t, map[string][]byte{"a": []byte("base a"), "b": []byte("base b")})
	a := teststore.Named(t, s, "a", base, tarOf(t, map[string][]byte{"a": []byte("base a"), "c": []byte("only in a")}))
	b := teststore.Named(t, s, "b", base, tarOf(t, map[string][]byte{"c": []byte("only in b, longer")}))
	for _, legacy := range []bool{false, true} {
		if legacy {
			damageList(t, s, a.Layers[1], func([]byte) []byte { return nil })
		}
		u, err := s.Usage(ctx, store.WithUniqueBytes())
		if err != nil {
			t.Fatal(err)
		}
		want := map[digest.Digest]int64{a.ID: int64(len("only in a")), b.ID: int64(len("only in b, longer"))}
		for _, iu := range u.Images {
			if iu.Unique != want[iu.Image.ID] {
				t.Errorf("legacy %v: image %v unique %d, want %d", legacy, iu.Names, iu.Unique, want[iu.Image.ID])
			}
		}
	}
}

// TestObjectListBackfillCrashMode: gc and fsck --repair write a missing list by making the
// read-only layer directory 0700, renaming the list in, and making it 0500 again; a crash in
// between leaves it 0700 (with or without the list). fsck must call that clean, and gc must go
// on as before, backfilling a missing list (the directory read-only again).
func TestObjectListBackfillCrashMode(t *testing.T) {
	ctx := context.Background()
	for _, withList := range []bool{false, true} {
		s := teststore.Open(t)
		img := teststore.Named(t, s, "keep", tarOf(t, map[string][]byte{"a": []byte("kept a")}))
		dir := filepath.Dir(listPath(s, img.Layers[0]))
		if err := os.Chmod(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if !withList {
			if err := os.Remove(listPath(s, img.Layers[0])); err != nil {
				t.Fatal(err)
			}
		}
		rep, err := s.Fsck(ctx, false)
		if err != nil || len(rep.Problems) != 0 {
			t.Fatalf("fsck of a layer directory left 0700 (list %v): %+v, %v", withList, rep, err)
		}
		if _, err := s.GC(ctx); err != nil {
			t.Fatal(err)
		}
		if rep, err = s.Fsck(ctx, false); err != nil || !rep.Clean() || rep.LegacyLayers != 0 {
			t.Fatalf("fsck after gc (list %v): %+v, %v", withList, rep, err)
		}
		if fi, err := os.Stat(dir); !withList && (err != nil || fi.Mode().Perm() != 0o500) {
			t.Fatalf("layer directory after gc's backfill: %v, %v", fi.Mode(), err)
		}
	}
}
