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
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ocilayout"
)

// entry is one tar entry of a test archive: a file, or a symlink when link is set.
type entry struct{ name, body, link string }

func tarBytes(t *testing.T, es ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := &tar.Header{Name: e.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(e.body))}
		if e.link != "" {
			h = &tar.Header{Name: e.name, Typeflag: tar.TypeSymlink, Linkname: e.link, Mode: 0o777}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// rootfs returns a one-file root file system tar and its config (whose DiffID is the tar's).
func rootfs(t *testing.T, file string) (layer, config []byte) {
	layer = tarBytes(t, entry{name: file, body: "content of " + file + "\n"})
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
	return tarBytes(t, entry{name: "l1/layer.tar", body: string(l1)}, entry{name: "l2/layer.tar", link: "../l1/layer.tar"},
		entry{name: "c1.json", body: string(c1)}, entry{name: "c2.json", body: string(c2)},
		entry{name: "manifest.json", body: manifest})
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
	arch := tarBytes(t, entry{name: "oci-layout", body: `{"imageLayoutVersion":"1.0.0"}`}, entry{name: "index.json", body: idx},
		entry{name: blob(l1), body: string(l1)}, entry{name: blob(c1), body: string(c1)}, entry{name: blob(mb), body: string(mb)})
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
	wrongLayer := tarBytes(t, entry{name: "etc/evil", body: "not what the config says"})
	cases := map[string][]byte{
		"DiffID mismatch": tarBytes(t, entry{name: "l.tar", body: string(wrongLayer)}, entry{name: "c.json", body: string(c1)},
			entry{name: "manifest.json", body: `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["l.tar"]}]`}),
		"missing layer": tarBytes(t, entry{name: "c.json", body: string(c1)},
			entry{name: "manifest.json", body: `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["gone.tar"]}]`}),
		"link escape": tarBytes(t, entry{name: "l.tar", link: "../../../../etc/passwd"}, entry{name: "c.json", body: string(c1)},
			entry{name: "manifest.json", body: `[{"Config":"c.json","RepoTags":["bad:v1"],"Layers":["l.tar"]}]`}),
		"no name": tarBytes(t, entry{name: "l.tar", body: string(l1)}, entry{name: "c.json", body: string(c1)},
			entry{name: "manifest.json", body: `[{"Config":"c.json","Layers":["l.tar"]}]`}),
		"root file system": tarBytes(t, entry{name: "etc/motd", body: "hi"}),
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
	if err := Extract(bytes.NewReader(tarBytes(t, entry{name: "../../outside", body: "x"})), x); err != nil {
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
	untagged := tarBytes(t, entry{name: "l.tar", body: string(l1)}, entry{name: "c.json", body: string(c1)},
		entry{name: "manifest.json", body: `[{"Config":"c.json","Layers":["l.tar"]}]`})
	cases := map[string]struct {
		archive []byte
		ref     string
		tag     string
		fails   bool
	}{
		"untagged":        {archive: untagged},
		"several":         {archive: dockerArchive(t), fails: true},
		"several, picked": {archive: dockerArchive(t), ref: "two:b", tag: "two:b"},
		"one of two tags": {archive: tarBytes(t, entry{name: "l.tar", body: string(l1)}, entry{name: "c.json", body: string(c1)},
			entry{name: "manifest.json", body: `[{"Config":"c.json","RepoTags":["a:1","a:2"],"Layers":["l.tar"]}]`}), tag: "a:1"},
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
