package archive

import (
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
)

// TestOpenByPosition: docker-archive:PATH:@N opens the archive's image N (skopeo's syntax),
// under its first name; N out of range is not found, a malformed N and @N of an oci-archive
// are invalid.
func TestOpenByPosition(t *testing.T) {
	p := filepath.Join(t.TempDir(), "two.tar")
	if err := os.WriteFile(p, dockerArchive(t), 0o644); err != nil {
		t.Fatal(err)
	}
	for ref, tag := range map[string]string{"@0": "example.com/one:v1", "@1": "two:a"} {
		o, err := Open(imageref.ArchiveRef{Transport: "docker-archive", Path: p, Ref: ref}, t.TempDir())
		if err != nil || o.Tag != tag {
			t.Fatalf("%s: %+v, %v; want tag %q", ref, o, err, tag)
		}
		idx, err := (ocilayout.Layout{Dir: o.Dir}).Index()
		for _, m := range idx.Manifests {
			if m.Digest != idx.Manifests[0].Digest {
				t.Errorf("%s: the layout holds another image too: %v", ref, idx.Manifests)
			}
		}
		if _, err2 := (ocilayout.Layout{Dir: o.Dir}).Resolve(o.Tag); err != nil || err2 != nil {
			t.Errorf("%s: %v, %v", ref, err, err2)
		}
		o.Close()
	}
	for ref, want := range map[string]error{"@2": errdefs.ErrNotFound, "@x": errdefs.ErrInvalid, "@01": errdefs.ErrInvalid, "@-1": errdefs.ErrInvalid} {
		if _, err := Open(imageref.ArchiveRef{Transport: "docker-archive", Path: p, Ref: ref}, t.TempDir()); !errors.Is(err, want) {
			t.Errorf("%s: %v, want %v", ref, err, want)
		}
	}
	layer, _ := rootfs(t, "etc/one")
	oa := filepath.Join(t.TempDir(), "oci.tar")
	if err := WriteOCIArchive(layoutOf(t, layer, digest.FromBytes(layer)), oa); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(imageref.ArchiveRef{Transport: "oci-archive", Path: oa, Ref: "@0"}, t.TempDir()); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("oci-archive:PATH:@0: %v, want invalid", err)
	}
}

// layoutOf writes an OCI layout (tag v1) of one gzip layer of tarBytes, whose config lists diffID.
func layoutOf(t *testing.T, layer []byte, diffID digest.Digest) string {
	dir := t.TempDir()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(layer)
	zw.Close()
	ld, _ := w.PutBlob(gz.Bytes())
	ld.MediaType = ocispec.MediaTypeImageLayerGzip
	cfg, _ := json.Marshal(ocispec.Image{RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}}})
	cd, _ := w.PutBlob(cfg)
	cd.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: []ocispec.Descriptor{ld}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md, _ := w.PutBlob(mb)
	md.MediaType = ocispec.MediaTypeImageManifest
	if err := w.AddManifest(md, "v1"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestWriteDockerArchive: the archive holds the layer decompressed under its DiffID and names
// it with the RepoTag given; it opens back as the same image. A layer whose tar is not its
// config's DiffID is refused and nothing is written.
func TestWriteDockerArchive(t *testing.T) {
	layer, _ := rootfs(t, "etc/motd")
	out := filepath.Join(t.TempDir(), "out.tar")
	if err := WriteDockerArchive(layoutOf(t, layer, digest.FromBytes(layer)), "v1", "localhost/app:v1", out); err != nil {
		t.Fatal(err)
	}
	x := t.TempDir()
	f, err := os.Open(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := Extract(f, x); err != nil {
		t.Fatal(err)
	}
	var images []dockerImage
	b, _ := os.ReadFile(filepath.Join(x, "manifest.json"))
	if err := json.Unmarshal(b, &images); err != nil || len(images) != 1 || len(images[0].RepoTags) != 1 ||
		images[0].RepoTags[0] != "localhost/app:v1" || len(images[0].Layers) != 1 {
		t.Fatalf("manifest.json: %s (%v)", b, err)
	}
	if got, err := os.ReadFile(filepath.Join(x, images[0].Layers[0])); err != nil || !bytes.Equal(got, layer) {
		t.Fatalf("the layer is not the uncompressed tar: %d bytes, %v", len(got), err)
	}
	o, err := Open(imageref.ArchiveRef{Transport: "docker-archive", Path: out}, t.TempDir())
	if err != nil || o.Tag != "localhost/app:v1" {
		t.Fatalf("open of the written archive: %+v %v", o, err)
	}
	o.Close()

	bad := filepath.Join(t.TempDir(), "bad.tar")
	err = WriteDockerArchive(layoutOf(t, layer, digest.FromString("another tar")), "v1", "", bad)
	if _, serr := os.Stat(bad); !errors.Is(err, errdefs.ErrDigestMismatch) || serr == nil {
		t.Fatalf("a mismatched layer: %v (file: %v)", err, serr)
	}
}
