package store_test

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// TestImageConfigDiffIDs (issue 18): an image whose config lists a DiffID its layer's tar does
// not hash to is refused, unless recorded with WithTrueDiffIDs: then the record lists the
// stored layer under its true DiffID and keeps the config's in ConfigDiffIDs; fsck accepts
// exactly that difference, and gc keeps the true layer. A consistent image records no
// ConfigDiffIDs.
func TestImageConfigDiffIDs(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	tw.WriteHeader(&tar.Header{Name: "etc/hello", Mode: 0o644, Size: 6, Typeflag: tar.TypeReg})
	tw.Write([]byte("hello\n"))
	tw.Close()
	l, err := layer.Import(ctx, s, bytes.NewReader(b.Bytes()), layer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	claimed := digest.FromString("the tar the config names")
	manifestOf := func(diffID digest.Digest) ([]byte, []byte) {
		config, _ := json.Marshal(ocispec.Image{RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}}})
		manifest, _ := json.Marshal(ocispec.Manifest{
			Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
			Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromString("blob"), Size: 4}},
		})
		return manifest, config
	}
	m, c := manifestOf(claimed)
	if _, err := s.PutImage(ctx, m, c); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("PutImage of a config naming a layer the store lacks: %v", err)
	}
	if _, err := s.PutImage(ctx, m, c, store.WithTrueDiffIDs([]digest.Digest{l.DiffID, l.DiffID})); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("PutImage with two true DiffIDs for one layer: %v", err)
	}
	img, err := s.PutImage(ctx, m, c, store.WithTrueDiffIDs([]digest.Digest{l.DiffID}))
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.Image(ctx, img.ID)
	if err != nil || !slices.Equal(got.Layers, []digest.Digest{l.DiffID}) || !slices.Equal(got.ConfigDiffIDs, []digest.Digest{claimed}) ||
		!slices.Equal(got.ConfigLayers(), []digest.Digest{claimed}) {
		t.Fatalf("record %+v (%v): want layers [%s], configDiffIDs [%s]", got, err, l.DiffID, claimed)
	}
	if err := s.SetRef(ctx, "mismatched", img.ID); err != nil {
		t.Fatal(err)
	}
	m2, c2 := manifestOf(l.DiffID)
	same, err := s.PutImage(ctx, m2, c2, store.WithTrueDiffIDs([]digest.Digest{l.DiffID}))
	if err != nil || same.ConfigDiffIDs != nil {
		t.Fatalf("consistent image: %+v %v", same, err)
	}
	unlock()
	if rep, err := s.Fsck(ctx, false); err != nil || !rep.Clean() {
		t.Fatalf("fsck of a recorded mismatch: %v %v", rep.Problems, err)
	}
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.HasLayer(l.DiffID) {
		t.Fatal("gc removed the layer of an image recorded under its true DiffID")
	}
	checkFsckRefusesOtherDifferences(t, s, img.ID)
}

// checkFsckRefusesOtherDifferences: any other difference between record and config is a
// problem: the record without its configDiffIDs, or with other ones.
func checkFsckRefusesOtherDifferences(t *testing.T, s *store.Store, id digest.Digest) {
	t.Helper()
	ctx := context.Background()
	p := filepath.Join(s.Root(), "images", id.Encoded(), "image.json")
	orig, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	for name, edit := range map[string]func(map[string]any){
		"no configDiffIDs":    func(m map[string]any) { delete(m, "configDiffIDs") },
		"other configDiffIDs": func(m map[string]any) { m["configDiffIDs"] = []string{digest.FromString("other").String()} },
	} {
		var rec map[string]any
		json.Unmarshal(orig, &rec)
		edit(rec)
		b, _ := json.Marshal(rec)
		os.Chmod(filepath.Dir(p), 0o700)
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, b, 0o444); err != nil {
			t.Fatal(err)
		}
		if rep, err := s.Fsck(ctx, false); err != nil || rep.Clean() || !strings.Contains(strings.Join(rep.Problems, "\n"), "record lists DiffIDs") {
			t.Errorf("%s: fsck %v %v, want the record and config disagreeing", name, rep.Problems, err)
		}
	}
}
