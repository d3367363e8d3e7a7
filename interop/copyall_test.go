package interop

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/tarstream"
)

// archTar is a small root file system that names its architecture.
func archTar(t *testing.T, arch string) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	files := []struct{ name, body string }{
		{"etc/", ""},
		{"etc/arch", arch + "\n"},
		{"etc/motd", strings.Repeat("built for "+arch+"\n", 2000)},
	}
	for _, f := range files {
		h := &tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.body)), Typeflag: tar.TypeReg, ModTime: mt}
		if strings.HasSuffix(f.name, "/") {
			h.Mode, h.Typeflag = 0o755, tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write([]byte(f.body)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// multiPlatformLayout writes an OCI layout whose tag v1 is an index of one gzip image per
// architecture, as a multi-arch build leaves it.
func multiPlatformLayout(t *testing.T, tars map[string][]byte) string {
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
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}
	idx.SchemaVersion = 2
	for _, arch := range []string{"amd64", "arm64"} {
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(tars[arch])
		zw.Close()
		layer := put(gz.Bytes(), ocispec.MediaTypeImageLayerGzip)
		p := ocispec.Platform{OS: "linux", Architecture: arch}
		cfg, _ := json.Marshal(ocispec.Image{Platform: p, Config: ocispec.ImageConfig{Cmd: []string{"/bin/sh"}},
			RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{digest.FromBytes(tars[arch])}}})
		m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: put(cfg, ocispec.MediaTypeImageConfig), Layers: []ocispec.Descriptor{layer}}
		m.SchemaVersion = 2
		mb, _ := json.Marshal(m)
		md := put(mb, ocispec.MediaTypeImageManifest)
		md.Platform = &p
		idx.Manifests = append(idx.Manifests, md)
	}
	ib, _ := json.Marshal(idx)
	if err := w.AddManifest(put(ib, ocispec.MediaTypeImageIndex), "v1"); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestCopyAllPodmanSkopeoRead (issue 18): skopeo 1.9 pushes a two-platform gzip index to a
// Debian docker-registry; `kura copy --all` converts it to an index of zstd:chunked images in
// another repository; skopeo reads the index raw and copies it all (every layer's tar hashes to
// its DiffID), and podman 4.3 pulls each platform with --arch: its image has that architecture
// and that platform's files.
func TestCopyAllPodmanSkopeoRead(t *testing.T) {
	requireTools(t, "podman", "skopeo", "docker-registry")
	reg := startDebianRegistry(t)
	tars := map[string][]byte{"amd64": archTar(t, "amd64"), "arm64": archTar(t, "arm64")}
	src, dst := reg.Host+"/multi/src:v1", reg.Host+"/multi/zc:v1"
	run(t, os.Environ(), "skopeo", "copy", "--all", "--dest-tls-verify=false", "oci:"+multiPlatformLayout(t, tars)+":v1", "docker://"+src)

	p := newPodman(t, reg.Host)
	kura := exec.Command(testkit.Kura(t), "copy", "--all", "--tls-verify=false", "docker://"+src, "docker://"+dst)
	kura.Env = append(p.env, "HOME="+t.TempDir())
	if out, err := kura.CombinedOutput(); err != nil || !strings.Contains(string(out), "index of 2 images") {
		t.Fatalf("kura copy --all: %v\n%s", err, out)
	}

	var idx ocispec.Index
	raw := run(t, os.Environ(), "skopeo", "inspect", "--raw", "--tls-verify=false", "docker://"+dst)
	if err := json.Unmarshal([]byte(raw), &idx); err != nil || idx.MediaType != ocispec.MediaTypeImageIndex || len(idx.Manifests) != 2 {
		t.Fatalf("skopeo inspect --raw: %v\n%s", err, raw)
	}
	out := t.TempDir()
	run(t, os.Environ(), "skopeo", "copy", "--all", "--src-tls-verify=false", "docker://"+dst, "oci:"+out+":v1")
	l := ocilayout.Layout{Dir: out}
	for _, md := range idx.Manifests {
		checkZstdChunkedImage(t, l, md, tars)
	}

	for _, arch := range []string{"amd64", "arm64"} {
		id := strings.TrimSpace(p.run(t, "pull", "-q", "--tls-verify=false", "--arch", arch, dst))
		if got := strings.TrimSpace(p.run(t, "image", "inspect", "--format", "{{.Architecture}}", id)); got != arch {
			t.Errorf("podman pull --arch %s: image %s has architecture %q", arch, id, got)
		}
		mnt := strings.TrimSpace(p.run(t, "image", "mount", id))
		checkTreeAgainstTar(t, mnt, tars[arch])
		p.run(t, "image", "unmount", id)
	}
}

// checkZstdChunkedImage checks one manifest of skopeo's copy of kura's index: it names its
// platform, its one layer is zstd:chunked with a TOC, and the layer's tar is that platform's
// and hashes to the config's DiffID.
func checkZstdChunkedImage(t *testing.T, l ocilayout.Layout, md ocispec.Descriptor, tars map[string][]byte) {
	t.Helper()
	if md.Platform == nil || tars[md.Platform.Architecture] == nil {
		t.Fatalf("index entry %s names platform %v", md.Digest, md.Platform)
	}
	arch := md.Platform.Architecture
	var m ocispec.Manifest
	var cfg ocispec.Image
	if b, err := l.ReadBlob(md, 1<<20); err != nil || json.Unmarshal(b, &m) != nil || len(m.Layers) != 1 {
		t.Fatalf("%s manifest: %v (%d layers)", arch, err, len(m.Layers))
	}
	if b, err := l.ReadBlob(m.Config, 1<<20); err != nil || json.Unmarshal(b, &cfg) != nil {
		t.Fatalf("%s config: %v", arch, err)
	}
	d := m.Layers[0]
	if d.MediaType != ocispec.MediaTypeImageLayerZstd || d.Annotations[chunked.AnnotationTOCDigest] == "" {
		t.Errorf("%s layer: %s, annotations %v; want zstd:chunked", arch, d.MediaType, d.Annotations)
	}
	rc, err := l.Verified(d)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	dr, err := tarstream.Decompress(rc)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(dr)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Architecture != arch || digest.FromBytes(got) != cfg.RootFS.DiffIDs[0] || !bytes.Equal(got, tars[arch]) {
		t.Errorf("%s: config architecture %q, layer tar %s (%d bytes), diff_id %s, want the %s tar",
			arch, cfg.Architecture, digest.FromBytes(got), len(got), cfg.RootFS.DiffIDs[0], arch)
	}
}
