package interop

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// sharedTestdata is testdata/zstd-chunked at the root of the kura module.
func sharedTestdata(t *testing.T) string { return testdata.Dir(t, "zstd-chunked") }

// referenceLayout makes an OCI layout holding the reference compressor's blob NAME.zstd-chunked
// with the annotations it produced.
func referenceLayout(t *testing.T, name string) string {
	t.Helper()
	td := sharedTestdata(t)
	var desc chunked.Descriptor
	b, err := os.ReadFile(filepath.Join(td, name+".descriptor.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &desc); err != nil {
		t.Fatal(err)
	}
	blob, err := os.ReadFile(filepath.Join(td, name+".zstd-chunked"))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.PutBlob(blob); err != nil {
		t.Fatal(err)
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{desc.DiffID}}})
	cd, _ := w.PutBlob(cfg)
	cd.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd,
		Layers: []ocispec.Descriptor{{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size, Annotations: desc.Annotations}}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md, _ := w.PutBlob(mb)
	md.MediaType = ocispec.MediaTypeImageManifest
	if err := w.AddManifest(md, name); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestPullWhatSkopeoPushed: skopeo 1.9 pushes the layout it wrote (old zstd:chunked format, no
// tar-split) and a layout holding the reference compressor's blob to a Debian docker-registry;
// kura pulls both, each into its own store (the layers have the same DiffID). The old format is
// pulled whole (its DiffID cannot be checked after a partial pull) and says so; the reference's
// blob is pulled partially. Both layers export to sha256(mixed.tar).
func TestPullWhatSkopeoPushed(t *testing.T) {
	requireTools(t, "skopeo", "docker-registry")
	reg := startDebianRegistry(t)
	td := sharedTestdata(t)
	run(t, os.Environ(), "skopeo", "copy", "--dest-tls-verify=false",
		"oci:"+filepath.Join(td, "skopeo-1.9", "oci-layout"), "docker://"+reg.Host+"/interop/old:v1")
	run(t, os.Environ(), "skopeo", "copy", "--dest-tls-verify=false",
		"oci:"+referenceLayout(t, "mixed")+":mixed", "docker://"+reg.Host+"/interop/reference:mixed")

	c := registry.New(registry.WithTLSVerify(false))
	stores := map[*pull.Report]*store.Store{}
	pullOne := func(ref string) *pull.Report {
		t.Helper()
		s, err := store.Open(t.TempDir(), store.WithoutSync())
		if err != nil {
			t.Fatal(err)
		}
		r, err := imageref.Parse("docker://" + reg.Host + ref)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := pull.Pull(context.Background(), s, registry.NewSource(c, r))
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		stores[rep] = s
		return rep
	}
	old := pullOne("/interop/old:v1")
	if l := old.Layers[0]; l.Mode != pull.ModeFull || !strings.Contains(l.Note, "no tar-split") {
		t.Fatalf("skopeo 1.9's layer: %+v", l)
	}
	ref := pullOne("/interop/reference:mixed")
	l := ref.Layers[0]
	if l.Mode != pull.ModePartial || l.RangesIgnored || l.BytesRequested > l.BlobBytes {
		t.Fatalf("reference blob: %+v", l)
	}
	mixedTar, err := os.ReadFile(filepath.Join(td, "mixed.tar"))
	if err != nil {
		t.Fatal(err)
	}
	want := digest.FromBytes(mixedTar)
	for _, rep := range []*pull.Report{old, ref} {
		diffID := rep.Layers[0].DiffID
		if diffID != want {
			t.Fatalf("DiffID %s, want sha256(mixed.tar) %s", diffID, want)
		}
		h := digest.SHA256.Digester()
		s := stores[rep]
		unlock, _ := s.RLock(context.Background())
		err := layer.Export(context.Background(), s, diffID, h.Hash())
		unlock()
		if err != nil || h.Digest() != want {
			t.Fatalf("export: %v (%s)", err, h.Digest())
		}
	}
}
