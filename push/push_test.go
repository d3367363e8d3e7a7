package push_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
	"github.com/kura-oci/kura/tarimage"
	"github.com/kura-oci/kura/tarstream"
)

// testdataDir is the module's testdata/ directory.
func testdataDir(t testing.TB) string { return testdata.Dir(t) }

// genTar makes a deterministic layer tar: directories, text and random files (a few large
// enough to be chunked), a run of zeros, a symlink and a hardlink. seed picks the content;
// version changes a few files.
func genTar(t testing.TB, seed uint64, version int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 1))
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		var sb strings.Builder
		for sb.Len() < n {
			fmt.Fprintf(&sb, "line %d of layer %d, setting %d\n", rng.IntN(1000), seed, rng.IntN(50))
		}
		return []byte(sb.String()[:n])
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mtime := time.Unix(1700000000, 0)
	add := func(h *tar.Header, body []byte) {
		h.ModTime, h.Format = mtime, tar.FormatPAX
		h.Size = int64(len(body))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(body); err != nil {
			t.Fatal(err)
		}
	}
	dir := fmt.Sprintf("l%d/", seed)
	add(&tar.Header{Name: dir, Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for i := range 30 {
		body := text(100 + rng.IntN(8000))
		if version > 0 && i%10 == 3 {
			body = append(body, fmt.Sprintf("changed in version %d\n", version)...)
		}
		add(&tar.Header{Name: fmt.Sprintf("%sf%02d.txt", dir, i), Typeflag: tar.TypeReg, Mode: 0o644}, body)
	}
	big := append(text(300000), random(200000)...)
	big = append(big, make([]byte, 4000)...)
	big = append(big, text(100000)...)
	if version > 0 {
		copy(big[250000:], fmt.Sprintf("version %d", version))
	}
	add(&tar.Header{Name: dir + "big.bin", Typeflag: tar.TypeReg, Mode: 0o755}, big)
	add(&tar.Header{Name: dir + "link", Typeflag: tar.TypeSymlink, Linkname: "big.bin", Mode: 0o777}, nil)
	add(&tar.Header{Name: dir + "hard", Typeflag: tar.TypeLink, Linkname: dir + "f00.txt", Mode: 0o644}, nil)
	add(&tar.Header{Name: dir + "empty", Typeflag: tar.TypeReg, Mode: 0o600}, nil)
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func sha(b []byte) digest.Digest { return digest.FromBytes(b) }

// makeLayout writes an image with the given layer tars to an OCI layout, each layer as a plain
// tar or gzip.
func makeLayout(t testing.TB, dir, tag string, gz bool, tars ...[]byte) {
	t.Helper()
	makeLayoutWith(t, dir, tag, gz, nil, tars...)
}

// makeLayoutWith is makeLayout with the config's diff_ids given (nil: the true ones).
func makeLayoutWith(t testing.TB, dir, tag string, gz bool, configDiffIDs []digest.Digest, tars ...[]byte) {
	t.Helper()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	var layers []ocispec.Descriptor
	var diffIDs []digest.Digest
	for _, tb := range tars {
		blob, mt := tb, ocispec.MediaTypeImageLayer
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(tb)
			zw.Close()
			blob, mt = b.Bytes(), ocispec.MediaTypeImageLayerGzip
		}
		d, err := w.PutBlob(blob)
		if err != nil {
			t.Fatal(err)
		}
		d.MediaType = mt
		layers = append(layers, d)
		diffIDs = append(diffIDs, sha(tb))
	}
	if configDiffIDs != nil {
		diffIDs = configDiffIDs
	}
	cfg, _ := json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}})
	cd, err := w.PutBlob(cfg)
	if err != nil {
		t.Fatal(err)
	}
	cd.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: cd, Layers: layers}
	m.SchemaVersion = 2
	mb, _ := json.Marshal(m)
	md, err := w.PutBlob(mb)
	if err != nil {
		t.Fatal(err)
	}
	md.MediaType = ocispec.MediaTypeImageManifest
	if err := w.AddManifest(md, tag); err != nil {
		t.Fatal(err)
	}
}

// uncompressed returns the tar inside a layer blob.
func uncompressed(t testing.TB, blob io.Reader) []byte {
	t.Helper()
	rc, err := tarstream.Decompress(blob)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// checkLayout checks a written layout: the manifest's layers have the format's media type (and
// TOC annotations a reader accepts, for zstd:chunked), and each layer's uncompressed tar hashes
// to the config's DiffID, which equals want.
func checkLayout(t testing.TB, dir, tag string, f push.Format, want []digest.Digest) *source.Image {
	t.Helper()
	l := ocilayout.Layout{Dir: dir}
	r, err := l.Resolve(tag)
	if err != nil {
		t.Fatal(err)
	}
	if got := r.Config.RootFS.DiffIDs; fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("config diff_ids %v, want %v", got, want)
	}
	if len(r.Manifest.Layers) != len(want) {
		t.Fatalf("%d layers, want %d", len(r.Manifest.Layers), len(want))
	}
	for i, d := range r.Manifest.Layers {
		if d.MediaType != f.MediaType() {
			t.Errorf("layer %d: media type %s, want %s", i, d.MediaType, f.MediaType())
		}
		if f == push.ZstdChunked {
			if !chunked.IsChunked(d.Annotations) {
				t.Errorf("layer %d: no zstd:chunked annotations: %v", i, d.Annotations)
			}
			blob, err := l.OpenBlob(d)
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := chunked.Open(blob, d.Size, d.Annotations); err != nil {
				t.Errorf("layer %d: zstd:chunked metadata: %v", i, err)
			}
			blob.Close()
		}
		rc, err := l.Verified(d)
		if err != nil {
			t.Fatal(err)
		}
		tb := uncompressed(t, rc)
		rc.Close()
		if sha(tb) != want[i] {
			t.Errorf("layer %d: uncompressed tar hashes to %s, want %s", i, sha(tb), want[i])
		}
	}
	return r
}

func layoutSource(t testing.TB, dir, tag string) source.Source {
	t.Helper()
	return ocilayout.NewSource(dir, tag)
}

func layoutDest(t testing.TB, dir, tag string) push.Destination {
	t.Helper()
	d, err := push.NewDestination(imageref.Reference{Transport: imageref.OCILayout, Dir: dir, Tag: tag}, nil, "")
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestCopySkopeoLayout(t *testing.T) {
	src := filepath.Join(testdataDir(t), "zstd-chunked", "skopeo-1.9", "oci-layout")
	orig, err := ocilayout.Layout{Dir: src}.Resolve("")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, f := range []push.Format{push.ZstdChunked, push.Zstd, push.Gzip} {
		dir := t.TempDir()
		rep, err := push.Copy(ctx, layoutSource(t, src, ""), layoutDest(t, dir, "out"), push.WithFormat(f))
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		r := checkLayout(t, dir, "out", f, orig.Config.RootFS.DiffIDs)
		if rep.Image != r.Descriptor.Digest || rep.Uploaded != len(r.Manifest.Layers) {
			t.Errorf("%s: report %+v does not match the layout", f, rep)
		}
		if !bytes.Equal(r.ConfigBytes, orig.ConfigBytes) {
			t.Errorf("%s: config bytes changed", f)
		}
		// skopeo's zstd:chunked layers already are zstd:chunked, and zstd: copied as they are
		// (issue 18), the manifest too.
		if kept := f != push.Gzip; kept != (rep.Image == orig.Descriptor.Digest) {
			t.Errorf("%s: manifest %s, skopeo's %s", f, rep.Image, orig.Descriptor.Digest)
		}
	}
}

func TestCopyGzipLayout(t *testing.T) {
	src := t.TempDir()
	tars := [][]byte{genTar(t, 1, 0), genTar(t, 2, 0)}
	makeLayout(t, src, "gz", true, tars...)
	dir := t.TempDir()
	if _, err := push.Copy(context.Background(), layoutSource(t, src, "gz"), layoutDest(t, dir, "zc")); err != nil {
		t.Fatal(err)
	}
	checkLayout(t, dir, "zc", push.ZstdChunked, []digest.Digest{sha(tars[0]), sha(tars[1])})
}

// TestCopyDeterministic: the same image gives the same manifest digest whatever the number of
// layers and frames compressed at once.
func TestCopyDeterministic(t *testing.T) {
	src := t.TempDir()
	makeLayout(t, src, "", false, genTar(t, 1, 0), genTar(t, 2, 0), genTar(t, 3, 0), genTar(t, 1, 0))
	ctx := context.Background()
	for _, f := range []push.Format{push.ZstdChunked, push.Zstd, push.Gzip} {
		var first digest.Digest
		for _, p := range [][2]int{{1, 1}, {4, 3}, {2, 8}} {
			dir := t.TempDir()
			rep, err := push.Copy(ctx, layoutSource(t, src, ""), layoutDest(t, dir, ""),
				push.WithFormat(f), push.WithJobs(p[0]), push.WithConcurrency(p[1]))
			if err != nil {
				t.Fatal(err)
			}
			if rep.Layers[3].Status != push.StatusDuplicate || rep.Layers[3].Digest != rep.Layers[0].Digest {
				t.Errorf("%s: repeated layer: %+v", f, rep.Layers[3])
			}
			if first == "" {
				first = rep.Image
			} else if rep.Image != first {
				t.Errorf("%s: jobs %d, concurrency %d gave manifest %s, want %s", f, p[0], p[1], rep.Image, first)
			}
		}
	}
}

func TestCopyRejectsWrongDiffID(t *testing.T) {
	src := t.TempDir()
	tb := genTar(t, 1, 0)
	makeLayoutWith(t, src, "", false, []digest.Digest{sha(genTar(t, 2, 0))}, tb)
	_, err := push.Copy(context.Background(), layoutSource(t, src, ""), layoutDest(t, t.TempDir(), ""))
	if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Fatalf("err = %v, want a digest mismatch", err)
	}
}

// pushClient is a registry client with the test registry's credentials over base.
func pushClient(base http.RoundTripper, opts ...registry.Option) *registry.Client {
	all := []registry.Option{
		registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))),
		registry.WithRetry(4, time.Millisecond),
		registry.WithTransport(base),
	}
	return registry.New(append(all, opts...)...)
}

// exportAll returns the exact tar of every layer of a stored image, checking each against its
// DiffID.
func exportAll(t testing.TB, s *store.Store, img store.Image) [][]byte {
	t.Helper()
	var tars [][]byte
	for _, d := range img.Layers {
		var b bytes.Buffer
		if err := layer.Export(context.Background(), s, d, &b); err != nil {
			t.Fatal(err)
		}
		if sha(b.Bytes()) != d {
			t.Fatalf("exported layer hashes to %s, want %s", sha(b.Bytes()), d)
		}
		tars = append(tars, b.Bytes())
	}
	return tars
}

func registryDest(t testing.TB, c *registry.Client, ref string, mountFrom ...imageref.Repository) push.Destination {
	t.Helper()
	r, err := imageref.Parse(ref)
	if err != nil {
		t.Fatal(err)
	}
	d, err := push.NewDestination(r, c, t.TempDir(), mountFrom...)
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// pullInto pulls ref into a fresh store and returns the store and the image.
func pullInto(t testing.TB, c *registry.Client, ref string) (*store.Store, store.Image, *pull.Report) {
	t.Helper()
	r, err := imageref.Parse(ref)
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSource(c, r)
	s := teststore.Open(t)
	rep, err := pull.Pull(context.Background(), s, src)
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Image(context.Background(), rep.Image)
	if err != nil {
		t.Fatal(err)
	}
	return s, img, rep
}

// TestPushRoundTrip pushes a stored image (several layers, one repeated) as zstd:chunked, pulls
// it into an empty store (partially: the layers are zstd:chunked), and compares the layers' exact
// tars. A second push sends no blob.
func TestPushRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	mc := &registrytest.FaultyUploads{Inner: http.DefaultTransport}
	c := pushClient(mc, registry.WithChunkSize(256<<10))

	// A three-layer image, one layer repeated, reaches the store through a layout pull.
	layout := t.TempDir()
	makeLayout(t, layout, "v1", false, genTar(t, 1, 0), genTar(t, 2, 0), genTar(t, 1, 0))
	s := teststore.Open(t)
	if _, err := pull.Pull(ctx, s, layoutSource(t, layout, "v1"), pull.WithName("app:v1")); err != nil {
		t.Fatal(err)
	}
	img, err := s.ResolveImage(ctx, "app:v1")
	if err != nil {
		t.Fatal(err)
	}
	want := exportAll(t, s, img)

	ref := reg.Host + "/test/app:v1"
	rep, err := push.Push(ctx, s, "app:v1", registryDest(t, c, ref), push.WithJobs(2))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Uploaded != 2 || rep.Layers[2].Status != push.StatusDuplicate {
		t.Fatalf("first push: %+v", rep)
	}
	if mc.Count(http.MethodPatch) == 0 {
		t.Fatal("no PATCH uploads")
	}

	s2, img2, prep := pullInto(t, pushClient(http.DefaultTransport), ref)
	cfg, _ := s.ImageConfig(ctx, img.ID)
	cfg2, _ := s2.ImageConfig(ctx, img2.ID)
	if !bytes.Equal(cfg, cfg2) {
		t.Error("the config changed on the way")
	}
	for _, l := range prep.Layers {
		if l.Mode == pull.ModeFull {
			t.Errorf("layer %s was pulled in full, want partial (zstd:chunked)", l.Digest)
		}
	}
	got := exportAll(t, s2, img2)
	for i := range want {
		if !bytes.Equal(got[i], want[i]) {
			t.Errorf("layer %d differs after the round trip", i)
		}
	}
	_, mb, err := c.GetManifest(ctx, imageref.Repository{Domain: reg.Host, Path: "test/app"}, "v1")
	if err != nil {
		t.Fatal(err)
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	if m.MediaType != ocispec.MediaTypeImageManifest || sha(mb) != rep.Image {
		t.Errorf("manifest %s (%s), report says %s", sha(mb), m.MediaType, rep.Image)
	}
	for i, l := range m.Layers {
		if l.MediaType != ocispec.MediaTypeImageLayerZstd || l.Annotations[chunked.AnnotationTOCDigest] == "" ||
			l.Annotations[chunked.AnnotationOldTOCDigest] == "" {
			t.Errorf("layer %d: %s %v", i, l.MediaType, l.Annotations)
		}
	}

	// Again: every blob is found by HEAD; nothing is uploaded.
	before := mc.Count(http.MethodPatch) + mc.Count(http.MethodPost)
	rep2, err := push.Push(ctx, s, "app:v1", registryDest(t, c, ref))
	if err != nil {
		t.Fatal(err)
	}
	if n := mc.Count(http.MethodPatch) + mc.Count(http.MethodPost) - before; n != 0 || rep2.Uploaded != 0 || rep2.Existed != 2 || rep2.BytesSent != 0 {
		t.Fatalf("second push: %d upload requests, report %+v", n, rep2)
	}
	if rep2.Image != rep.Image {
		t.Errorf("second push wrote manifest %s, first %s", rep2.Image, rep.Image)
	}
}

// TestPushSurvivesDroppedConnections cuts several PATCH bodies halfway; the push completes and
// pulls back equal.
func TestPushSurvivesDroppedConnections(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	s := teststore.Open(t)
	tb := genTar(t, 7, 0)
	if _, err := tarimage.Import(ctx, s, bytes.NewReader(tb), "app:v1", tarimage.Options{Created: time.Unix(1700000000, 0)}); err != nil {
		t.Fatal(err)
	}
	mc := &registrytest.FaultyUploads{Inner: http.DefaultTransport, Kind: registrytest.CutBody, At: map[int]bool{2: true, 3: true, 5: true}}
	c := pushClient(mc, registry.WithChunkSize(64<<10), registry.WithRetry(1, time.Millisecond))
	ref := reg.Host + "/test/drops:v1"
	rep, err := push.Push(ctx, s, "app:v1", registryDest(t, c, ref))
	if err != nil {
		t.Fatal(err)
	}
	if mc.Faults() != 3 {
		t.Fatalf("%d faults injected, want 3", mc.Faults())
	}
	t.Logf("layer %d bytes; POST %d, PATCH %d, GET %d", rep.Size, mc.Count(http.MethodPost), mc.Count(http.MethodPatch), mc.Count(http.MethodGet))
	s2, img2, _ := pullInto(t, pushClient(http.DefaultTransport), ref)
	got := exportAll(t, s2, img2)
	if len(got) != 1 || !bytes.Equal(got[0], tb) {
		t.Fatal("the pulled layer differs from the pushed tar")
	}
}

// TestCopyRegistryMounts: copying a kura-pushed image to another repository of the same
// registry recompresses to the same bytes, which are then mounted rather than uploaded.
func TestCopyRegistryMounts(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	mc := &registrytest.FaultyUploads{Inner: http.DefaultTransport}
	c := pushClient(mc)
	layout := t.TempDir()
	tars := [][]byte{genTar(t, 1, 0), genTar(t, 2, 0)}
	makeLayout(t, layout, "", true, tars...)
	srcRef := reg.Host + "/test/a:v1"
	if _, err := push.Copy(ctx, layoutSource(t, layout, ""), registryDest(t, c, srcRef)); err != nil {
		t.Fatal(err)
	}
	r, _ := imageref.Parse(srcRef)
	src := registry.NewSource(c, r)
	patches := mc.Count(http.MethodPatch)
	rep, err := push.Copy(ctx, src, registryDest(t, c, reg.Host+"/test/b:v1", r.Repository()))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Mounted != 2 || mc.Count(http.MethodPatch) != patches {
		t.Fatalf("copy within the registry: %+v, %d PATCH", rep, mc.Count(http.MethodPatch)-patches)
	}
	s2, img2, _ := pullInto(t, c, reg.Host+"/test/b:v1")
	got := exportAll(t, s2, img2)
	for i := range tars {
		if !bytes.Equal(got[i], tars[i]) {
			t.Errorf("layer %d differs", i)
		}
	}
}

func TestParseFormat(t *testing.T) {
	for _, s := range []string{"zstd:chunked", "zstd", "gzip"} {
		if f, err := push.ParseFormat(s); err != nil || string(f) != s {
			t.Errorf("%q: %v %v", s, f, err)
		}
	}
	for _, s := range []string{"", "xz", "zstd:chunked "} {
		if _, err := push.ParseFormat(s); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%q: err = %v", s, err)
		}
	}
	src := t.TempDir()
	makeLayout(t, src, "", false, genTar(t, 1, 0))
	_, err := push.Copy(context.Background(), layoutSource(t, src, ""), layoutDest(t, t.TempDir(), ""), push.WithFormat(push.Gzip), push.WithLevel(12))
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("gzip level 12: err = %v", err)
	}
}
