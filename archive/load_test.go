package archive

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ocilayout"
)

// rootfs returns a one-file root file system tar and its config (whose DiffID is the tar's).
func rootfs(t *testing.T, file string) (layer, config []byte) {
	layer = tartest.Tar(t, tartest.File(file, "content of "+file+"\n"))
	cfg := ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(layer)}}}
	config, _ = json.Marshal(cfg)
	return layer, config
}

// dockerArchive is laid out as docker save writes it: a second image reuses the first one's
// layer through a symlink, and has two RepoTags.
func dockerArchive(t *testing.T) []byte {
	l1, c1 := rootfs(t, "etc/one")
	_, c2 := rootfs(t, "etc/one")
	c2 = append(c2, ' ') // another config, same layer
	manifest := `[{"Config":"c1.json","RepoTags":["example.com/one:v1"],"Layers":["l1/layer.tar"]},
		{"Config":"c2.json","RepoTags":["two:a","two:b"],"Layers":["l2/layer.tar"]}]`
	return tartest.Tar(t, tartest.File("l1/layer.tar", string(l1)), tartest.Symlink("l2/layer.tar", "../l1/layer.tar"),
		tartest.File("c1.json", string(c1)), tartest.File("c2.json", string(c2)),
		tartest.File("manifest.json", manifest))
}

func TestLoadDockerArchive(t *testing.T) {
	s := teststore.Open(t)
	ctx := context.Background()
	res, err := Load(ctx, s, bytes.NewReader(dockerArchive(t)), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 3 || res[0].Name != "example.com/one:v1" || res[0].NewLayers != 1 || res[1].NewLayers != 0 || res[1].Image.ID != res[2].Image.ID {
		t.Fatalf("loaded %+v", res)
	}
	for _, n := range []string{"example.com/one:v1", "two:a", "two:b"} {
		if _, err := s.Ref(ctx, n); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
}

func TestLoadOCIArchive(t *testing.T) {
	l1, c1 := rootfs(t, "etc/oci")
	blob := func(b []byte) string { return "blobs/sha256/" + digest.FromBytes(b).Encoded() }
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(c1), Size: int64(len(c1))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: digest.FromBytes(l1), Size: int64(len(l1))}}}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	idx := `{"schemaVersion":2,"manifests":[{"mediaType":"` + ocispec.MediaTypeImageManifest + `","digest":"` + digest.FromBytes(mb).String() +
		`","size":` + strings.TrimSpace(string(must(json.Marshal(len(mb))))) + `,"annotations":{"org.opencontainers.image.ref.name":"localhost/oci:v1"}}]}`
	arch := tartest.Tar(t, tartest.File("oci-layout", `{"imageLayoutVersion":"1.0.0"}`), tartest.File("index.json", idx),
		tartest.File(blob(l1), string(l1)), tartest.File(blob(c1), string(c1)), tartest.File(blob(mb), string(mb)))
	s := teststore.Open(t)
	res, err := Load(context.Background(), s, bytes.NewReader(arch), t.TempDir())
	if err != nil || len(res) != 1 || res[0].Name != "localhost/oci:v1" || res[0].Image.ID != digest.FromBytes(mb) {
		t.Fatalf("loaded %+v, %v", res, err)
	}
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// Hostile or broken archives are refused as invalid input, and nothing is named.
func TestLoadRefusesBadArchives(t *testing.T) {
	l1, c1 := rootfs(t, "etc/one")
	wrongLayer := tartest.Tar(t, tartest.File("etc/evil", "not what the config says"))
	cases := map[string][]byte{
		"DiffID mismatch": tartest.Tar(t, tartest.File("l.tar", string(wrongLayer)), tartest.File("c.json", string(c1)),
			tartest.File("manifest.json", `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["l.tar"]}]`)),
		"missing layer": tartest.Tar(t, tartest.File("c.json", string(c1)),
			tartest.File("manifest.json", `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["gone.tar"]}]`)),
		"link escape": tartest.Tar(t, tartest.Symlink("l.tar", "../../../../etc/passwd"), tartest.File("c.json", string(c1)),
			tartest.File("manifest.json", `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["l.tar"]}]`)),
		"no name": tartest.Tar(t, tartest.File("l.tar", string(l1)), tartest.File("c.json", string(c1)),
			tartest.File("manifest.json", `[{"Config":"c.json","Layers":["l.tar"]}]`)),
		"root file system": tartest.Tar(t, tartest.File("etc/motd", "hi")),
		"not a tar":        []byte(strings.Repeat("garbage ", 200)),
	}
	for name, arch := range cases {
		s := teststore.Open(t)
		_, err := Load(context.Background(), s, bytes.NewReader(arch), t.TempDir())
		t.Logf("%s: %v", name, err)
		if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Errorf("%s: %v, want invalid input", name, err)
		}
		if _, err := s.Ref(context.Background(), "bad:v1"); err == nil {
			t.Errorf("%s: an image was named", name)
		}
	}
}

// A name with .. stays inside the directory it is unpacked into.
func TestExtractConfinesNames(t *testing.T) {
	dir := t.TempDir()
	x := dir + "/x"
	if err := Extract(bytes.NewReader(tartest.Tar(t, tartest.File("../../outside", "x"))), x); err != nil {
		t.Fatal(err)
	}
	if !exists(x + "/outside") {
		t.Fatal("the entry was not put inside")
	}
}

// A compressed archive that expands enormously is stopped early.
func TestExtractStopsBombs(t *testing.T) {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	const size = 64 << 20
	tw.WriteHeader(&tar.Header{Name: "zeros", Typeflag: tar.TypeReg, Mode: 0o644, Size: size})
	tw.Write(make([]byte, size))
	tw.Close()
	zw.Close()
	dir := t.TempDir() + "/x"
	err := Extract(bytes.NewReader(buf.Bytes()), dir)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "expands") {
		t.Fatalf("%d compressed bytes: %v, want the expansion refused", buf.Len(), err)
	}
	if fi, err := os.Stat(dir + "/zeros"); err == nil && fi.Size() >= size {
		t.Fatalf("the bomb was unpacked whole (%d bytes)", fi.Size())
	}
}

// Open picks the archive's only image without a REF (also an image without RepoTags), and asks
// for a REF when there are several.
func TestOpenPicksTheImage(t *testing.T) {
	dir := t.TempDir()
	l1, c1 := rootfs(t, "etc/one")
	untagged := tartest.Tar(t, tartest.File("l.tar", string(l1)), tartest.File("c.json", string(c1)),
		tartest.File("manifest.json", `[{"Config":"c.json","Layers":["l.tar"]}]`))
	cases := map[string]struct {
		archive []byte
		ref     string
		tag     string
		fails   bool
	}{
		"untagged":        {archive: untagged},
		"several":         {archive: dockerArchive(t), fails: true},
		"several, picked": {archive: dockerArchive(t), ref: "two:b", tag: "two:b"},
		"one of two tags": {archive: tartest.Tar(t, tartest.File("l.tar", string(l1)), tartest.File("c.json", string(c1)),
			tartest.File("manifest.json", `[{"Config":"c.json","RepoTags":["a:1","a:2"],"Layers":["l.tar"]}]`)), tag: "a:1"},
	}
	for name, c := range cases {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".tar")
		if err := os.WriteFile(p, c.archive, 0o644); err != nil {
			t.Fatal(err)
		}
		o, err := Open(imageref.ArchiveRef{Transport: "docker-archive", Path: p, Ref: c.ref}, t.TempDir())
		if c.fails {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("%s: %v, want invalid", name, err)
			}
			continue
		}
		if err != nil || o.Tag != c.tag {
			t.Errorf("%s: %+v, %v; want tag %q", name, o, err, c.tag)
			continue
		}
		if _, err := (ocilayout.Layout{Dir: o.Dir}).Resolve(o.Tag); err != nil {
			t.Errorf("%s: the layout does not resolve: %v", name, err)
		}
		o.Close()
	}
}
