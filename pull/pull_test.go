package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// testdataDir is the module's testdata/ directory.
func testdataDir(t testing.TB) string { return testdata.Dir(t) }

// treeFile is one entry of a generated layer.
type treeFile struct {
	name     string
	typ      byte
	content  []byte
	linkname string
	mode     int64
}

// genTree makes a deterministic tree: many small files, a few large ones that chunk, a zero run,
// symlinks, a hardlink and directories. version changes a few small files and one chunk of one
// large file, and adds one file.
func genTree(version int) []treeFile {
	rng := rand.New(rand.NewSource(1))
	random := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	text := func(n int) []byte {
		var sb strings.Builder
		for sb.Len() < n {
			fmt.Fprintf(&sb, "line %d of some configuration text %d\n", rng.Intn(1000), rng.Intn(50))
		}
		return []byte(sb.String()[:n])
	}
	var fs []treeFile
	fs = append(fs, treeFile{name: "usr/", typ: tar.TypeDir, mode: 0o755}, treeFile{name: "usr/lib/", typ: tar.TypeDir, mode: 0o755},
		treeFile{name: "etc/", typ: tar.TypeDir, mode: 0o755})
	for i := 0; i < 60; i++ {
		fs = append(fs, treeFile{name: fmt.Sprintf("usr/lib/small-%02d", i), typ: tar.TypeReg, content: text(200 + rng.Intn(20000)), mode: 0o644})
	}
	big := append(text(400000), random(300000)...)
	big = append(big, make([]byte, 5000)...) // a zeros chunk
	big = append(big, text(200000)...)
	fs = append(fs, treeFile{name: "usr/lib/big.so", typ: tar.TypeReg, content: big, mode: 0o755})
	fs = append(fs, treeFile{name: "usr/lib/blob.bin", typ: tar.TypeReg, content: random(500000), mode: 0o644})
	fs = append(fs, treeFile{name: "usr/lib/empty", typ: tar.TypeReg, mode: 0o644})
	fs = append(fs, treeFile{name: "usr/lib/dup-of-small-00", typ: tar.TypeReg, content: fs[3].content, mode: 0o600})
	fs = append(fs, treeFile{name: "usr/lib/link", typ: tar.TypeSymlink, linkname: "big.so", mode: 0o777})
	fs = append(fs, treeFile{name: "usr/lib/hard", typ: tar.TypeLink, linkname: "usr/lib/blob.bin", mode: 0o644})
	fs = append(fs, treeFile{name: "etc/version", typ: tar.TypeReg, content: []byte(fmt.Sprintf("v%d\n", version)), mode: 0o644})
	if version > 0 {
		vr := rand.New(rand.NewSource(int64(100 + version)))
		for _, i := range []int{5, 17, 42} {
			f := &fs[3+i]
			f.content = append(append([]byte(nil), f.content...), []byte(fmt.Sprintf("\nchanged in v%d %d\n", version, vr.Int()))...)
		}
		// Change a few bytes in the middle of big.so: only the chunks around them differ.
		for i := range fs {
			if fs[i].name == "usr/lib/big.so" {
				c := append([]byte(nil), fs[i].content...)
				copy(c[250000:], fmt.Sprintf("patched v%d", version))
				fs[i].content = c
			}
		}
		fs = append(fs, treeFile{name: fmt.Sprintf("usr/lib/new-in-v%d", version), typ: tar.TypeReg, content: text(30000), mode: 0o644})
	}
	return fs
}

func tarOf(t testing.TB, files []treeFile) []byte {
	t.Helper()
	entries := make([]tartest.Entry, len(files))
	for i, f := range files {
		entries[i] = f.entry()
	}
	return tartest.Tar(t, entries...)
}

// entry is f as a member of a generated layer, all of which have one fixed time.
func (f treeFile) entry() tartest.Entry {
	e := tartest.Entry{Header: tar.Header{Name: f.name, Typeflag: f.typ, Mode: f.mode, Linkname: f.linkname,
		ModTime: time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)}}
	if f.typ == tar.TypeReg {
		e.Header.Size, e.Data = int64(len(f.content)), f.content
	}
	return e
}

// testImage is an image of zstd:chunked layers built from tars.
type testImage struct {
	layers   [][]byte // blobs
	descs    []ocispec.Descriptor
	diffIDs  []digest.Digest
	config   []byte
	manifest []byte
}

func buildImage(t testing.TB, tars ...[]byte) *testImage {
	t.Helper()
	return fromKit(imagetest.Chunked(t, tars...))
}

func fromKit(b *imagetest.Image) *testImage {
	return &testImage{layers: b.Blobs, descs: b.Descs, diffIDs: b.DiffIDs, config: b.Config, manifest: b.Manifest}
}

// promiseDiffID makes the image's config (and so its manifest) promise d as its first layer's
// DiffID.
func (img *testImage) promiseDiffID(d digest.Digest) {
	img.editConfig(func(c *ocispec.Image) { c.RootFS.DiffIDs[0] = d })
}

// editConfig changes the image's config with edit, and its manifest to name the new config.
func (img *testImage) editConfig(edit func(*ocispec.Image)) {
	var cfg ocispec.Image
	json.Unmarshal(img.config, &cfg)
	edit(&cfg)
	img.config, _ = json.Marshal(cfg)
	var m ocispec.Manifest
	json.Unmarshal(img.manifest, &m)
	m.Config.Digest, m.Config.Size = digest.FromBytes(img.config), int64(len(img.config))
	img.manifest, _ = json.Marshal(m)
}

func (img *testImage) writeLayout(t testing.TB, dir, tag string) {
	t.Helper()
	w, err := ocilayout.Create(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range append(append([][]byte{}, img.layers...), img.config, img.manifest) {
		if _, err := w.PutBlob(b); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.AddManifest(ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(img.manifest), Size: int64(len(img.manifest))}, tag); err != nil {
		t.Fatal(err)
	}
}

func (img *testImage) push(t testing.TB, reg *registrytest.Registry, repo, tag string) {
	t.Helper()
	kit := imagetest.Image{Blobs: img.layers, Descs: img.descs, DiffIDs: img.diffIDs, Config: img.config, Manifest: img.manifest}
	kit.Push(t, reg, repo, tag)
}

// exportDigest rebuilds a stored layer's tar and returns its sha256 (Export checks it too).
func exportDigest(t testing.TB, s *store.Store, diffID digest.Digest) digest.Digest {
	t.Helper()
	h := sha256.New()
	ctx := context.Background()
	unlock, err := s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	if err := layer.Export(ctx, s, diffID, h); err != nil {
		t.Fatalf("export %s: %v", diffID, err)
	}
	return digest.NewDigest(digest.SHA256, h)
}

func checkFsck(t testing.TB, s *store.Store) {
	t.Helper()
	rep, err := s.Fsck(context.Background(), false)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() {
		t.Fatalf("fsck: %v", rep.Problems)
	}
}

func registryClient(opts ...registry.Option) *registry.Client {
	base := []registry.Option{registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))),
		registry.WithRetry(4, time.Millisecond)}
	return registry.New(append(base, opts...)...)
}

func pullRef(t testing.TB, s *store.Store, ref string, client *registry.Client, opts ...Option) (*Report, error) {
	t.Helper()
	return pullWith(t, context.Background(), s, ref, client, opts...)
}

func pullWith(t testing.TB, ctx context.Context, s *store.Store, ref string, client *registry.Client, opts ...Option) (*Report, error) {
	t.Helper()
	r, err := imageref.Parse(ref)
	if err != nil {
		t.Fatal(err)
	}
	var src source.Source = registry.NewSource(client, r)
	if r.Transport == imageref.OCILayout {
		src = ocilayout.NewSource(r.Dir, r.Tag)
	}
	return Pull(ctx, s, src, opts...)
}

func TestPullFromLayoutPartialEqualsFull(t *testing.T) {
	v0, v1 := buildImage(t, tarOf(t, genTree(0))), buildImage(t, tarOf(t, genTree(1)))
	dir := t.TempDir()
	v0.writeLayout(t, dir, "v0")
	v1.writeLayout(t, dir, "v1")

	partial := teststore.Open(t)
	rep0, err := pullRef(t, partial, "oci:"+dir+":v0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if rep0.Layers[0].Mode != ModePartial || rep0.ObjectsWritten == 0 {
		t.Fatalf("first pull: %+v", rep0.Layers[0])
	}
	var bars bytes.Buffer
	rep1, err := pullRef(t, partial, "oci:"+dir+":v1", nil, WithProgress(progress.NewPlain(&bars)))
	if err != nil {
		t.Fatal(err)
	}
	l1 := rep1.Layers[0]
	// As podman's bar: at the end every byte of the blob is done, most of them skipped.
	total := progress.HumanBytes(l1.BlobBytes)
	if want := fmt.Sprintf(": done %s / %s (skipped: %s = ", total, total, progress.HumanBytes(l1.BlobBytes-l1.BytesRequested)); !strings.Contains(bars.String(), want) {
		t.Fatalf("progress %q, want a line with %q", bars.String(), want)
	}
	if l1.Mode != ModePartial || l1.FilesReused < 50 || l1.ChunksReused == 0 {
		t.Fatalf("update pull reused too little: %+v", l1)
	}
	if l1.BytesRequested*5 > l1.BlobBytes {
		t.Fatalf("update pull requested %d of %d blob bytes", l1.BytesRequested, l1.BlobBytes)
	}
	full := teststore.Open(t)
	repFull, err := pullRef(t, full, "oci:"+dir+":v1", nil, WithoutPartial())
	if err != nil {
		t.Fatal(err)
	}
	// A full pull into an empty store writes every distinct content: as many objects as the
	// partial pulls wrote for v0 and v1 together, less those v1 dropped.
	if n := repFull.ObjectsWritten; repFull.Layers[0].Mode != ModeFull || n <= l1.ObjectsWritten || n > rep0.ObjectsWritten+l1.ObjectsWritten {
		t.Fatalf("full pull wrote %d objects; partial pulls %d then %d", n, rep0.ObjectsWritten, l1.ObjectsWritten)
	}
	if got, want := exportDigest(t, partial, v1.diffIDs[0]), exportDigest(t, full, v1.diffIDs[0]); got != want || got != v1.diffIDs[0] {
		t.Fatalf("partial export %s, full export %s, DiffID %s", got, want, v1.diffIDs[0])
	}
	// Both ways of pulling record the same TOC: same entries, chunks and digests. (A partial pull
	// keeps the blob's own TOC, frame offsets included; a full pull has no offsets to record.)
	tp, err := partial.LayerTOC(context.Background(), v1.diffIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	tf, err := full.LayerTOC(context.Background(), v1.diffIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	for i := range tp.Entries {
		tp.Entries[i].Offset, tp.Entries[i].EndOffset = 0, 0
	}
	jp, _ := json.Marshal(tp.Entries)
	jf, _ := json.Marshal(tf.Entries)
	if !bytes.Equal(jp, jf) {
		t.Fatalf("stored TOCs differ:\npartial %s\nfull    %s", jp[:min(len(jp), 600)], jf[:min(len(jf), 600)])
	}
	checkFsck(t, partial)
	checkFsck(t, full)
}

func TestPullPresentLayerFetchesNothing(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	if _, err := pullRef(t, s, "oci:"+dir+":x", nil); err != nil {
		t.Fatal(err)
	}
	rep, err := pullRef(t, s, "oci:"+dir+":x", nil, WithName("again"))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Layers[0].Mode != ModePresent || rep.BytesRequested != 0 {
		t.Fatalf("second pull of the same image: %+v", rep)
	}
}

func TestPullOldFormatFallsBackToFull(t *testing.T) {
	dir := filepath.Join(testdataDir(t), "zstd-chunked", "skopeo-1.9", "oci-layout")
	s := teststore.Open(t)
	rep, err := pullRef(t, s, "oci:"+dir, nil, WithName("skopeo"))
	if err != nil {
		t.Fatal(err)
	}
	l := rep.Layers[0]
	if l.Mode != ModeFull || !strings.Contains(l.Note, "no tar-split") {
		t.Fatalf("old format layer: %+v", l)
	}
	checkFsck(t, s)
}

func TestPullOversizedMetadataFallsBackToFull(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	rep, err := pullRef(t, s, "oci:"+dir+":x", nil, WithMaxMetadataSize(1000))
	if err != nil {
		t.Fatal(err)
	}
	if l := rep.Layers[0]; l.Mode != ModeFull || !strings.Contains(l.Note, "over the size bound") {
		t.Fatalf("layer with metadata over the bound: %+v", l)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
}

func TestPullRejectsWrongDiffID(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	// A config that promises another DiffID: the rebuilt tar must not match.
	promised := digest.FromString("something else")
	img.promiseDiffID(promised)
	dir := t.TempDir()
	img.writeLayout(t, dir, "bad")
	for _, opts := range [][]Option{nil, {WithoutPartial()}} {
		s := teststore.Open(t)
		_, err := pullRef(t, s, "oci:"+dir+":bad", nil, opts...)
		var m *layer.DiffIDMismatchError
		if !errors.Is(err, errdefs.ErrDigestMismatch) || !errors.As(err, &m) || m.Want != promised {
			t.Fatalf("got %v, want a DiffID mismatch", err)
		}
		// The error explains itself: what the layer is, both digests, and what to do.
		for _, want := range []string{"zstd:chunked layer", "containers/storage", m.Got.String(), "--compression-format=gzip", "kura import", "kura push"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error lacks %q: %v", want, err)
			}
		}
		// Only the partial pull rebuilt the tar from files of the store too, and says so (which
		// also shows it did not fall back to a full pull).
		if partial := opts == nil; partial != strings.Contains(err.Error(), "kura fsck") {
			t.Errorf("partial pull %v, error names kura fsck %v: %v", partial, !partial, err)
		}
		if ids, _ := s.Images(context.Background()); len(ids) != 0 {
			t.Fatalf("an image was recorded: %v", ids)
		}
		checkFsck(t, s)
	}
}

func TestPullFromRegistryWithFaults(t *testing.T) {
	reg := registrytest.New(t)
	v0, v1 := buildImage(t, tarOf(t, genTree(0))), buildImage(t, tarOf(t, genTree(1)))
	v0.push(t, reg, "app", "v0")
	v1.push(t, reg, "app", "v1")

	// A reference store holding v0, copied for each case so every case pulls v1 as an update.
	base := t.TempDir()
	baseStore := teststore.Open(t, teststore.At(base))
	if _, err := pullRef(t, baseStore, "docker://"+reg.Host+"/app:v0", registryClient(registry.WithTLSVerify(false))); err != nil {
		t.Fatal(err)
	}

	cases := []struct {
		name      string
		fault     registrytest.Fault
		wantMode  string
		wantError bool
		// wantStatus is an answer the proxy must have given, proving the fault was hit.
		wantStatus int
	}{
		{"no fault", registrytest.Fault{}, ModePartial, false, 206},
		{"ignore range", registrytest.Fault{Kind: registrytest.IgnoreRange}, ModeFull, false, 200}, // its first answer is the full pull
		{"multi-range 400", registrytest.Fault{Kind: registrytest.RejectMultiRange, Status: 400}, ModePartial, false, 400},
		{"multi-range 416", registrytest.Fault{Kind: registrytest.RejectMultiRange, Status: 416}, ModePartial, false, 416},
		{"multi-range 501", registrytest.Fault{Kind: registrytest.RejectMultiRange, Status: 501}, ModePartial, false, 501},
		{"all ranges refused", registrytest.Fault{Kind: registrytest.RejectAllRanges, Status: 416}, ModeFull, false, 416},
		{"drop after 3000 bytes", registrytest.Fault{Kind: registrytest.DropAfter, AfterBytes: 3000, Times: 2}, ModePartial, false, 0},
		{"500 then success", registrytest.Fault{Kind: registrytest.ServerError, Times: 1}, ModePartial, false, 500},
		{"429 retry-after", registrytest.Fault{Kind: registrytest.TooManyRequests, RetryAfter: "0", Times: 1}, ModePartial, false, 429},
		{"unquoted boundary", registrytest.Fault{Kind: registrytest.UnquotedBoundary}, ModePartial, false, 206},
		{"wrong content-range", registrytest.Fault{Kind: registrytest.WrongContentRange}, "", true, 206},
		{"corrupt body", registrytest.Fault{Kind: registrytest.CorruptBody}, "", true, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			copyTree(t, base, dir)
			s := teststore.Open(t, teststore.At(dir))
			reg.Proxy.SetFault(tc.fault)
			rep, err := pullRef(t, s, "docker://"+reg.Host+"/app:v1", registryClient(registry.WithTLSVerify(false)))
			reqs := reg.Proxy.BlobRequests()
			reg.Proxy.SetFault(registrytest.Fault{})
			faulted := false
			for _, r := range reqs {
				faulted = faulted || r.Faulted
				if tc.wantStatus != 0 && r.Status == tc.wantStatus {
					tc.wantStatus = 0
				}
			}
			if tc.fault.Kind != registrytest.None && !faulted {
				t.Fatalf("the proxy injected no fault: %+v", reqs)
			}
			if tc.wantStatus != 0 {
				t.Fatalf("no blob answer had status %d: %+v", tc.wantStatus, reqs)
			}
			checkFsck(t, s)
			if tc.wantError {
				if err == nil {
					t.Fatalf("pull succeeded despite %s", tc.name)
				}
				if ids, _ := s.Images(context.Background()); len(ids) != 1 {
					t.Fatalf("images after a failed pull: %v", ids)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if rep.Layers[0].Mode != tc.wantMode {
				t.Fatalf("mode %s (%s), want %s", rep.Layers[0].Mode, rep.Layers[0].Note, tc.wantMode)
			}
			if got := exportDigest(t, s, v1.diffIDs[0]); got != v1.diffIDs[0] {
				t.Fatalf("exported %s, want %s", got, v1.diffIDs[0])
			}
		})
	}
}

// copyTree copies a store directory (regular files and dirs only).
func copyTree(t testing.TB, from, to string) {
	t.Helper()
	err := filepath.Walk(from, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(from, p)
		dst := filepath.Join(to, rel)
		if fi.IsDir() {
			return os.MkdirAll(dst, 0o755)
		}
		if !fi.Mode().IsRegular() {
			return nil
		}
		in, err := os.Open(p)
		if err != nil {
			return err
		}
		defer in.Close()
		out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, fi.Mode().Perm()|0o200)
		if err != nil {
			return err
		}
		if _, err := io.Copy(out, in); err != nil {
			out.Close()
			return err
		}
		if err := out.Close(); err != nil {
			return err
		}
		return os.Chmod(dst, fi.Mode().Perm())
	})
	if err != nil {
		t.Fatal(err)
	}
}
