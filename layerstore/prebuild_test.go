package layerstore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
)

// TestImageBuiltFromThePullsEntries: with composefs diffs, a first lookup's layer image is built
// from the entries the pull handed over, as soon as the pull has recorded the layer: it is in
// place before the layer's mount begins, and it is byte for byte the image built afterwards from
// the stored layer.
func TestImageBuiltFromThePullsEntries(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newFixtureWith(t, Options{Diff: DiffComposefs})
	ctx := context.Background()
	diffID := f.img.DiffIDs[1]
	var builtFirst bool
	f.ls.beforeBackgroundMount = func() {
		_, err := os.Stat(f.ls.imagePath(diffID))
		builtFirst = err == nil
	}
	layer, err := f.ls.lookupEarly(ctx, f.ref, f.img.Descs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := layer.pending.wait(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(layer.Diff, syscall.MNT_DETACH) })
	if !builtFirst {
		t.Errorf("the composefs image of %s was not in place when its mount began: not built from the pull's entries", diffID)
	}
	checkFile(t, filepath.Join(layer.Diff, "d/new"), "new in layer 2")
	got, err := os.ReadFile(f.ls.imagePath(diffID))
	if err != nil {
		t.Fatal(err)
	}
	otherState := t.TempDir()
	testkit.DetachMountsUnder(t, otherState)
	other, err := New(f.s, nil, Options{State: otherState, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	p, _, err := other.layerImage(ctx, diffID)
	if err != nil {
		t.Fatal(err)
	}
	if want, err := os.ReadFile(p); err != nil || !bytes.Equal(got, want) {
		t.Errorf("the image built from the pull's entries (%d bytes) differs from the stored layer's (%d bytes, %v)", len(got), len(want), err)
	}
}

// TestPrebuildNeedsTheRecord: an image built from a pull's entries is put in place only when the
// pull says it recorded the layer with them; otherwise nothing is left, not even a temp file.
func TestPrebuildNeedsTheRecord(t *testing.T) {
	f := newFixtureWith(t, Options{Diff: DiffComposefs})
	ctx := context.Background()
	if _, err := f.r.Resolve(ctx, f.ref); err != nil { // the layers stored, nothing mounted
		t.Fatal(err)
	}
	state := t.TempDir()
	testkit.DetachMountsUnder(t, state)
	ls, err := New(f.s, nil, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	diffID := f.img.DiffIDs[1]
	entries, err := f.s.LayerEntries(ctx, diffID)
	if err != nil {
		t.Fatal(err)
	}
	ls.layerEntries(diffID, "", entries)(false)
	if err := ls.awaitPrebuild(ctx, diffID); err != nil {
		t.Fatal(err)
	}
	left, _ := filepath.Glob(filepath.Join(state, dirComposefs, "*"))
	if len(left) != 0 {
		t.Fatalf("after a pull that did not record the layer: %v; want nothing", left)
	}
	ls.layerEntries(diffID, "", entries)(true)
	if err := ls.awaitPrebuild(ctx, diffID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ls.imagePath(diffID)); err != nil {
		t.Fatalf("after the layer was recorded: %v; want its image", err)
	}
}

// TestNewRemovesTemps: the temp files of images a killed server was writing are removed when the
// next one starts; the images in place stay.
func TestNewRemovesTemps(t *testing.T) {
	f := newFixtureWith(t, Options{Diff: DiffCheckout})
	state := t.TempDir()
	dir := filepath.Join(state, dirComposefs)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{".tmp-123", "abc.cfs"} {
		if err := os.WriteFile(filepath.Join(dir, n), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := New(f.s, nil, Options{State: state, Diff: DiffCheckout}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, ".tmp-123")); !os.IsNotExist(err) {
		t.Errorf("the temp file is still there: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "abc.cfs")); err != nil {
		t.Errorf("an image in place was removed: %v", err)
	}
}
