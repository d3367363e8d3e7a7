package push_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry/registrytest"
)

// mismatchedLayout writes an OCI layout (tag v1) of two gzip layers whose config lists a wrong
// DiffID for the first, as podman 4.3's zstd:chunked push of a `podman import` does.
func mismatchedLayout(t *testing.T, tars [][]byte, claimed digest.Digest) (string, ocispec.Descriptor) {
	t.Helper()
	dir := t.TempDir()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(b []byte, mt string) ocispec.Descriptor {
		d, err := w.PutBlob(b)
		if err != nil {
			t.Fatal(err)
		}
		d.MediaType = mt
		return d
	}
	var layers []ocispec.Descriptor
	diffIDs := []digest.Digest{claimed}
	for i, tb := range tars {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(tb)
		zw.Close()
		layers = append(layers, put(gz.Bytes(), ocispec.MediaTypeImageLayerGzip))
		if i > 0 {
			diffIDs = append(diffIDs, digest.FromBytes(tb))
		}
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		Config: ocispec.ImageConfig{Cmd: []string{"/bin/hello"}}, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}})
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: put(cfg, ocispec.MediaTypeImageConfig), Layers: layers}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	if err := w.AddManifest(put(mb, ocispec.MediaTypeImageManifest), "v1"); err != nil {
		t.Fatal(err)
	}
	return dir, layers[0]
}

// TestDiffIDMismatchAllowed (issue 18): a copy of an image whose config lists a wrong DiffID
// is refused; with WithDiffIDMismatchAllowed it warns once, naming the layer and both DiffIDs,
// and writes a config that lists the true ones (other fields kept), which pulls back without
// any override. A pull with the override records the true DiffIDs; a push of that image writes
// the corrected config too. The override and WithPreserveDigests exclude each other.
func TestDiffIDMismatchAllowed(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	c := pushClient(http.DefaultTransport)
	tars := [][]byte{genTar(t, 21, 0), genTar(t, 22, 0)}
	claimed := digest.FromString("not the tar")
	dir, first := mismatchedLayout(t, tars, claimed)
	src := ocilayout.NewSource(dir, "v1")

	if _, err := push.Copy(ctx, src, registryDest(t, c, reg.Host+"/diffid/refused:v1")); !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("copy of a mismatched image: %v, want a digest mismatch", err)
	}
	type warning struct{ layer, got, want digest.Digest }
	var warned []warning
	warn := func(l, got, want digest.Digest) { warned = append(warned, warning{l, got, want}) }
	if _, err := push.Copy(ctx, src, registryDest(t, c, reg.Host+"/diffid/same:v1"), push.WithDiffIDMismatchAllowed(warn),
		push.WithPreserveDigests()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("copy with both the override and --preserve-digests: %v", err)
	}
	if _, err := push.Copy(ctx, src, registryDest(t, c, reg.Host+"/diffid/copied:v1"), push.WithDiffIDMismatchAllowed(warn)); err != nil {
		t.Fatal(err)
	}
	if want := (warning{first.Digest, digest.FromBytes(tars[0]), claimed}); !slices.Equal(warned, []warning{want}) {
		t.Fatalf("warnings %v, want %v", warned, want)
	}
	checkCorrected(t, reg.Host+"/diffid/copied:v1", tars)

	s := teststore.Open(t)
	warned = nil
	rep, err := pull.Pull(ctx, s, src, pull.WithName("mismatched"), pull.WithDiffIDMismatchAllowed(warn))
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Image(ctx, rep.Image)
	if err != nil || !slices.Equal(img.Layers, []digest.Digest{digest.FromBytes(tars[0]), digest.FromBytes(tars[1])}) ||
		!slices.Equal(img.ConfigDiffIDs, []digest.Digest{claimed, digest.FromBytes(tars[1])}) || len(warned) != 1 {
		t.Fatalf("pulled record %+v (%v), warnings %v", img, err, warned)
	}
	if got := exportAll(t, s, img); len(got) != 2 || !bytes.Equal(got[0], tars[0]) || !bytes.Equal(got[1], tars[1]) {
		t.Fatal("the pulled layers are not the blobs' tars")
	}
	if _, err := push.Push(ctx, s, "mismatched", registryDest(t, c, reg.Host+"/diffid/pushed:v1")); err != nil {
		t.Fatal(err)
	}
	checkCorrected(t, reg.Host+"/diffid/pushed:v1", tars)
}

// checkCorrected pulls ref (no override) and checks its layers are tars and its config lists
// their DiffIDs and keeps its Cmd.
func checkCorrected(t *testing.T, ref string, tars [][]byte) {
	t.Helper()
	s, img, _ := pullInto(t, pushClient(http.DefaultTransport), ref)
	if got := exportAll(t, s, img); len(got) != 2 || !bytes.Equal(got[0], tars[0]) || !bytes.Equal(got[1], tars[1]) || img.ConfigDiffIDs != nil {
		t.Fatalf("%s pulls back different layers (record %+v)", ref, img)
	}
	b, err := s.ImageConfig(context.Background(), img.ID)
	var cfg ocispec.Image
	if err != nil || json.Unmarshal(b, &cfg) != nil || !slices.Equal(cfg.Config.Cmd, []string{"/bin/hello"}) ||
		!slices.Equal(cfg.RootFS.DiffIDs, img.Layers) || cfg.Architecture != "amd64" {
		t.Fatalf("%s config: %s (%v)", ref, b, err)
	}
}
