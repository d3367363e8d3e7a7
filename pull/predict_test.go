package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// tarWith is tarOf with a hook on every header.
func tarWith(t testing.TB, files []treeFile, edit func(*tar.Header)) []byte {
	t.Helper()
	entries := make([]tartest.Entry, len(files))
	for i, f := range files {
		entries[i] = f.entry()
		edit(&entries[i].Header)
	}
	return tartest.Tar(t, entries...)
}

// blobTarSplit is the uncompressed tar-split of an image's first layer.
func blobTarSplit(t testing.TB, img *testImage) []byte {
	t.Helper()
	loc, err := chunked.LocateFromAnnotations(img.descs[0].Annotations, img.descs[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	b := img.layers[0]
	l, err := chunked.Parse(loc, b[loc.TOC.Offset:loc.TOC.End()], b[loc.TarSplit.Offset:loc.TarSplit.End()])
	if err != nil {
		t.Fatal(err)
	}
	return l.TarSplit
}

// pullUpdate writes v0 and v1 to one layout and pulls v0, then v1, into a new store.
func pullUpdate(t *testing.T, v0, v1 *testImage) (layout string, s *store.Store, update *Report) {
	t.Helper()
	layout = t.TempDir()
	v0.writeLayout(t, layout, "v0")
	v1.writeLayout(t, layout, "v1")
	s = teststore.Open(t)
	if _, err := pullRef(t, s, "oci:"+layout+":v0", nil); err != nil {
		t.Fatal(err)
	}
	update, err := pullRef(t, s, "oci:"+layout+":v1", nil)
	if err != nil {
		t.Fatal(err)
	}
	return layout, s, update
}

func tarSplitLength(t testing.TB, img *testImage) int64 {
	t.Helper()
	loc, err := chunked.LocateFromAnnotations(img.descs[0].Annotations, img.descs[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	return loc.TarSplit.Length
}

// TestPullPredictsTarSplit: an update of an image in the store gets its tar-split predicted from
// the previous version's, not fetched: exactly the tar-split's bytes fewer are requested than
// by a pull that has nothing to predict from, and the layer exports to its DiffID.
func TestPullPredictsTarSplit(t *testing.T) {
	v1tar := tarOf(t, genTree(1))
	v0, v1 := buildImage(t, tarOf(t, genTree(0))), buildImage(t, v1tar)
	dir, s, rep := pullUpdate(t, v0, v1)
	if !rep.Layers[0].TarSplitPredicted || rep.Layers[0].Note != "" {
		t.Fatalf("update pull: predicted %v, note %q", rep.Layers[0].TarSplitPredicted, rep.Layers[0].Note)
	}
	if got := exportDigest(t, s, v1.diffIDs[0]); got != v1.diffIDs[0] {
		t.Fatalf("export %s, DiffID %s", got, v1.diffIDs[0])
	}
	if lay, err := s.Layer(context.Background(), v1.diffIDs[0]); err != nil || lay.TarSize != int64(len(v1tar)) {
		t.Fatalf("recorded tar size %d, the tar has %d bytes (%v)", lay.TarSize, len(v1tar), err)
	}
	// The stored tar-split is the blob's, CRCs included, though it was never fetched.
	stored, err := s.LayerTarSplit(context.Background(), v1.diffIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	if real := blobTarSplit(t, v1); !bytes.Equal(stored, real) {
		t.Fatalf("stored tar-split (%d bytes) differs from the blob's (%d bytes)", len(stored), len(real))
	}
	// The record sizes the buffers the next prediction reads them into.
	if lay, _ := s.Layer(context.Background(), v1.diffIDs[0]); lay.TarSplitSize != int64(len(stored)) || lay.TOCSize == 0 {
		t.Fatalf("recorded metadata sizes %d, %d; the tar-split has %d bytes", lay.TOCSize, lay.TarSplitSize, len(stored))
	}
	checkFsck(t, s)

	// The same pull without prediction fetches the tar-split too.
	s2 := teststore.Open(t)
	if _, err := pullRef(t, s2, "oci:"+dir+":v0", nil); err != nil {
		t.Fatal(err)
	}
	rep2, err := pullRef(t, s2, "oci:"+dir+":v1", nil, func(o *options) { o.noPredict = true })
	if err != nil {
		t.Fatal(err)
	}
	if rep2.Layers[0].TarSplitPredicted {
		t.Fatal("predicted without a predecessor")
	}
	if d := rep2.BytesRequested - rep.BytesRequested; d != tarSplitLength(t, v1) {
		t.Fatalf("prediction saved %d bytes, the tar-split is %d", d, tarSplitLength(t, v1))
	}
}

// TestPullWrongPredictionFetchesTarSplit: when the new version's tar was written differently
// (owner names the TOC does not record), the prediction fails the DiffID check, and the pull
// fetches the real tar-split and completes, with a note.
func TestPullWrongPredictionFetchesTarSplit(t *testing.T) {
	v0 := buildImage(t, tarOf(t, genTree(0)))
	v1 := buildImage(t, tarWith(t, genTree(1), func(h *tar.Header) { h.Uname, h.Gname = "alice", "staff" }))
	_, s, rep := pullUpdate(t, v0, v1)
	lr := rep.Layers[0]
	if lr.TarSplitPredicted || !strings.Contains(lr.Note, "tar-split fetched") {
		t.Fatalf("predicted %v, note %q", lr.TarSplitPredicted, lr.Note)
	}
	if got := exportDigest(t, s, v1.diffIDs[0]); got != v1.diffIDs[0] {
		t.Fatalf("export %s, DiffID %s", got, v1.diffIDs[0])
	}
	ts, err := s.LayerTarSplit(context.Background(), v1.diffIDs[0])
	if err != nil || !bytes.Contains(ts, []byte("\"name\":")) {
		t.Fatalf("stored tar-split: %v", err)
	}
	checkFsck(t, s)
}

func TestRepository(t *testing.T) {
	for in, want := range map[string]string{
		"host:5000/a/b:v2":         "host:5000/a/b",
		"host:5000/a/b":            "host:5000/a/b",
		"host/a@sha256:00":         "host/a",
		"host/a:v1@sha256:00":      "host/a",
		"oci:/var/tmp/layout:c1":   "oci:/var/tmp/layout",
		"docker.io/library/debian": "docker.io/library/debian",
	} {
		if got := repository(in); got != want {
			t.Errorf("repository(%q) = %q, want %q", in, got, want)
		}
	}
}

// A pull updates the store's image when a stored ref names the same repository, whatever the tag.
func TestIsUpdate(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	if IsUpdate(ctx, s, "host:5000/app:v1") {
		t.Error("an empty store holds nothing to update")
	}
	teststore.Named(t, s, "host:5000/app:v1", tarOf(t, []treeFile{{name: "a", typ: tar.TypeReg, content: []byte("a"), mode: 0o644}}))
	for name, want := range map[string]bool{
		"host:5000/app:v2":       true,
		"host:5000/app@sha256:0": true,
		"host:5000/other:v1":     false,
		"other:5000/app:v1":      false,
		"":                       false,
	} {
		if got := IsUpdate(ctx, s, name); got != want {
			t.Errorf("IsUpdate(%q) = %v, want %v", name, got, want)
		}
	}
}
