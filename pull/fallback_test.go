package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/tarstream"
)

// remanifest writes the manifest again after a test changed the descriptors.
func (img *testImage) remanifest() {
	var m ocispec.Manifest
	json.Unmarshal(img.manifest, &m)
	m.Layers = img.descs
	img.manifest, _ = json.Marshal(m)
}

// withoutPositions drops the TOC and tar-split position annotations of every layer, keeping
// the TOC digest: the footer must locate the metadata.
func (img *testImage) withoutPositions() {
	for i := range img.descs {
		ann := map[string]string{}
		for k, v := range img.descs[i].Annotations {
			if k != chunked.AnnotationTOCPosition && k != chunked.AnnotationTarSplitPosition {
				ann[k] = v
			}
		}
		img.descs[i].Annotations = ann
	}
	img.remanifest()
}

// A TOC digest annotation without a position: the footer at the blob's end locates TOC and
// tar-split (as containers/storage did before the position annotation), and the annotation
// authenticates the TOC found there.
func TestPullLocatesTOCByFooter(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	img.withoutPositions()
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	rep, err := pullRef(t, s, "oci:"+dir+":x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := rep.Layers[0]; l.Mode != ModePartial {
		t.Fatalf("layer located by footer: %+v", l)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
	checkFsck(t, s)
}

// A layer whose annotations claim zstd:chunked but whose blob has no footer (a plain zstd
// stream): a partial pull is impossible, a full pull is safe and verifies everything.
func TestPullWithoutFooterFallsBackToFull(t *testing.T) {
	tb := tarOf(t, genTree(0))
	var blob bytes.Buffer
	zw, _ := zstd.NewWriter(&blob)
	zw.Write(tb)
	zw.Close()
	img := buildImage(t, tb)
	img.layers[0] = blob.Bytes()
	img.descs[0].Digest, img.descs[0].Size = digest.FromBytes(blob.Bytes()), int64(blob.Len())
	img.withoutPositions()
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	rep, err := pullRef(t, s, "oci:"+dir+":x", nil)
	if err != nil {
		t.Fatal(err)
	}
	if l := rep.Layers[0]; l.Mode != ModeFull || !strings.Contains(l.Note, "footer") {
		t.Fatalf("layer without footer: %+v", l)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
	checkFsck(t, s)
}

// A position annotation with a manifest type this build does not know (a newer format): the
// blob may be valid, and a full pull needs none of its metadata.
func TestPullUnknownTOCFormatFallsBackToFull(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	pos := img.descs[0].Annotations[chunked.AnnotationTOCPosition]
	img.descs[0].Annotations[chunked.AnnotationTOCPosition] = pos[:strings.LastIndexByte(pos, ':')] + ":7"
	img.remanifest()
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	rep, err := pullRef(t, s, "oci:"+dir+":x", nil)
	if err != nil {
		t.Fatalf("%v (exit %d)", err, errdefs.ExitCode(err))
	}
	if l := rep.Layers[0]; l.Mode != ModeFull || !strings.Contains(l.Note, "format") {
		t.Fatalf("layer of an unknown TOC format: %+v", l)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
}

// The footer locates a TOC, but not the one the annotation names: the image contradicts
// itself, which is refused like a wrong TOC at an annotated position (no fallback).
func TestPullFooterTOCMismatchFails(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	other := buildImage(t, tarOf(t, genTree(1)))
	img.withoutPositions()
	img.descs[0].Annotations[chunked.AnnotationTOCDigest] = other.descs[0].Annotations[chunked.AnnotationTOCDigest]
	img.remanifest()
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	_, err := pullRef(t, s, "oci:"+dir+":x", nil)
	if code := errdefs.ExitCode(err); code != errdefs.ExitInvalid && code != errdefs.ExitVerify {
		t.Fatalf("got %v (exit %d), want a refusal", err, code)
	}
	if ids, _ := s.Images(context.Background()); len(ids) != 0 {
		t.Fatalf("an image was recorded: %v", ids)
	}
}

// A tar name or link target that is not UTF-8 has no exact TOC (JSON) entry: the partial pull
// falls back to a full pull, and stores exactly what --full stores. (That the store then keeps
// the name byte for byte through export, checkout and mount is the store's business.)
func TestPullNonUTF8NameFallsBackToFull(t *testing.T) {
	for _, tc := range []struct {
		name string
		file treeFile
		note string
	}{
		{"name", treeFile{name: "etc/caf\xe9-latin1", typ: tar.TypeReg, content: []byte("bonjour\n"), mode: 0o644}, "name"},
		{"link target", treeFile{name: "etc/to-latin1", typ: tar.TypeSymlink, linkname: "caf\xe9", mode: 0o777}, "link target"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := buildImage(t, tarOf(t, append(genTree(0), tc.file)))
			dir := t.TempDir()
			img.writeLayout(t, dir, "x")
			s := teststore.Open(t)
			rep, err := pullRef(t, s, "oci:"+dir+":x", nil)
			if err != nil {
				t.Fatalf("partial pull: %v (exit %d)", err, errdefs.ExitCode(err))
			}
			if l := rep.Layers[0]; l.Mode != ModeFull || !strings.Contains(l.Note, tc.note) || !strings.Contains(l.Note, "UTF-8") {
				t.Fatalf("layer: %+v", l)
			}
			full := teststore.Open(t)
			if _, err := pullRef(t, full, "oci:"+dir+":x", nil, WithoutPartial()); err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			tsA, errA := s.LayerTarSplit(ctx, img.diffIDs[0])
			tsB, errB := full.LayerTarSplit(ctx, img.diffIDs[0])
			if errA != nil || errB != nil || !bytes.Equal(tsA, tsB) {
				t.Fatalf("tar-split after the fallback differs from --full's (%v, %v)", errA, errB)
			}
			entries, err := tarstream.DecodeTarSplit(tsA, tarstream.MaxTarSplitLines)
			if err != nil {
				t.Fatal(err)
			}
			found := false
			for i := range entries {
				found = found || entries[i].GetName() == tc.file.name
			}
			if !found {
				t.Fatal("the stored tar-split lost the entry's name")
			}
			checkFsck(t, s)
		})
	}
}

// The same in an update pull, whose tar-split is predicted from the stored version: the
// prediction cannot hold the name, the real tar-split is fetched, and the fallback follows.
func TestPullNonUTF8NameUpdateFallsBackToFull(t *testing.T) {
	odd := treeFile{name: "etc/caf\xe9-latin1", typ: tar.TypeReg, content: []byte("bonjour\n"), mode: 0o644}
	v0, v1 := buildImage(t, tarOf(t, append(genTree(0), odd))), buildImage(t, tarOf(t, append(genTree(1), odd)))
	dir := t.TempDir()
	v0.writeLayout(t, dir, "v0")
	v1.writeLayout(t, dir, "v1")
	s := teststore.Open(t)
	for _, tag := range []string{"v0", "v1"} {
		rep, err := pullRef(t, s, "oci:"+dir+":"+tag, nil, WithName("app:"+tag))
		if err != nil {
			t.Fatalf("%s: %v (exit %d)", tag, err, errdefs.ExitCode(err))
		}
		if l := rep.Layers[0]; l.Mode != ModeFull || !strings.Contains(l.Note, "UTF-8") {
			t.Fatalf("%s: %+v", tag, l)
		}
	}
	checkFsck(t, s)
}

// A registry that ignores Range answers the first ranged request with the whole blob: that
// body is the full pull. The layer blob is served exactly once, byte for byte.
func TestPullIgnoringRangeReadsBlobOnce(t *testing.T) {
	reg := registrytest.New(t)
	img := buildImage(t, tarOf(t, genTree(0)))
	img.push(t, reg, "app", "v0")
	s := teststore.Open(t)
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.IgnoreRange})
	rep, err := pullRef(t, s, "docker://"+reg.Host+"/app:v0", registryClient(registry.WithTLSVerify(false)))
	if err != nil {
		t.Fatal(err)
	}
	layerDigest := img.descs[0].Digest
	var served int64
	n := 0
	for _, r := range reg.Proxy.BlobRequests() {
		if r.Digest == layerDigest {
			n++
			served += r.BytesServed
		}
	}
	if n != 1 || served != img.descs[0].Size {
		t.Fatalf("the layer blob was requested %d times, %d bytes served; want once, %d bytes", n, served, img.descs[0].Size)
	}
	l := rep.Layers[0]
	if l.Mode != ModeFull || !l.RangesIgnored || !strings.Contains(l.Note, "whole blob") {
		t.Fatalf("layer from a registry that ignores Range: %+v", l)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
	checkFsck(t, s)
}

// The fallback rule: only the fallback class falls back, never hostile input with it.
func TestFallbackRule(t *testing.T) {
	ctx := context.Background()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	need := needFull("the registry serves no byte ranges")
	cases := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"nil", ctx, nil, false},
		{"reason", ctx, need, true},
		{"wrapped reason", ctx, errors.Join(errors.New("layer x"), need), true},
		{"ranges unsupported", ctx, registry.ErrRangesUnsupported, true},
		{"invalid", ctx, errdefs.ErrInvalid, false},
		{"reason with traversal", ctx, errors.Join(need, errdefs.ErrInvalid), false},
		{"reason with bad digest", ctx, errors.Join(need, errdefs.ErrDigestMismatch), false},
		{"over the bound", ctx, chunked.ErrMetadataTooLarge, false}, // translated where it arises
		{"cancelled", cancelled, need, false},
	}
	for _, tc := range cases {
		if _, _, ok := fallback(tc.ctx, tc.err); ok != tc.want {
			t.Errorf("%s: fallback %v, want %v", tc.name, ok, tc.want)
		}
	}
}
