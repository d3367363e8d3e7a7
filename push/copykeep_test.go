package push_test

import (
	"context"
	"errors"
	"net/http"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/source"
)

// sourceImage resolves src, for the digests a copy must keep.
func sourceImage(t testing.TB, src source.Source) *source.Image {
	t.Helper()
	img, err := src.Resolve(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// layerGETs counts the blob GETs the proxy answered for the given digests, and their bytes.
func layerGETs(reg *registrytest.Registry, layers map[digest.Digest]bool) (n int, bytes int64) {
	for _, r := range reg.Proxy.BlobRequests() {
		if layers[r.Digest] {
			n++
			bytes += r.BytesServed
		}
	}
	return n, bytes
}

// TestCopySameFormatMounts (issue 18): copying a zstd:chunked image to zstd:chunked inside one
// registry mounts every blob: no layer byte passes through Kura, nothing is uploaded, and the
// manifest keeps its digest.
func TestCopySameFormatMounts(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	mc := &registrytest.FaultyUploads{Inner: http.DefaultTransport}
	c := pushClient(mc)
	layout := t.TempDir()
	makeLayout(t, layout, "", true, genTar(t, 1, 0), genTar(t, 2, 0))
	srcRef := reg.Host + "/test/a:v1"
	if _, err := push.Copy(ctx, layoutSource(t, layout, ""), registryDest(t, c, srcRef)); err != nil {
		t.Fatal(err)
	}
	r, _ := imageref.Parse(srcRef)
	src := registry.NewSource(c, r)
	img := sourceImage(t, src)
	layers := map[digest.Digest]bool{}
	for _, l := range img.Manifest.Layers {
		layers[l.Digest] = true
	}
	getsBefore, _ := layerGETs(reg, layers)
	patches, puts := mc.Count(http.MethodPatch), mc.Count(http.MethodPut)

	rep, err := push.Copy(ctx, src, registryDest(t, c, reg.Host+"/test/b:v1", r.Repository()))
	if err != nil {
		t.Fatal(err)
	}
	if gets, _ := layerGETs(reg, layers); gets != getsBefore {
		t.Errorf("%d layer GETs during a same-format copy, want none", gets-getsBefore)
	}
	if rep.Mounted != 2 || rep.Uploaded != 0 || mc.Count(http.MethodPatch) != patches {
		t.Errorf("copy: %+v, %d PATCH", rep, mc.Count(http.MethodPatch)-patches)
	}
	// One PUT, the manifest's: the config was mounted too, no upload was finished.
	if n := mc.Count(http.MethodPut) - puts; n != 1 {
		t.Errorf("%d PUT requests, want only the manifest's", n)
	}
	if rep.Image != img.Descriptor.Digest {
		t.Errorf("manifest %s, source %s: the digest changed", rep.Image, img.Descriptor.Digest)
	}
}

// TestCopyAcrossRegistriesStreamsBlobs (issue 18): to another registry, layers already in the
// format are streamed whole, once, unchanged; the manifest keeps its digest.
func TestCopyAcrossRegistriesStreamsBlobs(t *testing.T) {
	ctx := context.Background()
	reg1, reg2 := registrytest.New(t), registrytest.New(t)
	c := pushClient(http.DefaultTransport)
	layout := t.TempDir()
	makeLayout(t, layout, "", false, genTar(t, 3, 0), genTar(t, 4, 0))
	srcRef := reg1.Host + "/test/a:v1"
	if _, err := push.Copy(ctx, layoutSource(t, layout, ""), registryDest(t, c, srcRef)); err != nil {
		t.Fatal(err)
	}
	r, _ := imageref.Parse(srcRef)
	src := registry.NewSource(c, r)
	img := sourceImage(t, src)
	layers := map[digest.Digest]bool{}
	var size int64
	for _, l := range img.Manifest.Layers {
		layers[l.Digest] = true
		size += l.Size
	}
	rep, err := push.Copy(ctx, src, registryDest(t, c, reg2.Host+"/test/b:v1"))
	if err != nil {
		t.Fatal(err)
	}
	if n, b := layerGETs(reg1, layers); n != 2 || b != size {
		t.Errorf("%d layer GETs, %d bytes; want 2, %d", n, b, size)
	}
	if rep.Uploaded != 2 || rep.Image != img.Descriptor.Digest {
		t.Errorf("copy: %+v; source manifest %s", rep, img.Descriptor.Digest)
	}
	for i, l := range rep.Layers {
		if l.Digest != img.Manifest.Layers[i].Digest {
			t.Errorf("layer %d: %s, source %s", i, l.Digest, img.Manifest.Layers[i].Digest)
		}
	}
}

// TestCopyGzipKeepsDigests (issue 18): gzip to gzip copies the blobs by digest and the manifest
// as is; gzip to zstd:chunked still recompresses.
func TestCopyGzipKeepsDigests(t *testing.T) {
	ctx := context.Background()
	layout := t.TempDir()
	makeLayout(t, layout, "", true, genTar(t, 5, 0))
	img := sourceImage(t, layoutSource(t, layout, ""))
	rep, err := push.Copy(ctx, layoutSource(t, layout, ""), layoutDest(t, t.TempDir(), ""), push.WithFormat(push.Gzip))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Image != img.Descriptor.Digest || rep.Layers[0].Digest != img.Manifest.Layers[0].Digest {
		t.Errorf("gzip→gzip: %+v; source %s", rep, img.Descriptor.Digest)
	}
	rep, err = push.Copy(ctx, layoutSource(t, layout, ""), layoutDest(t, t.TempDir(), ""))
	if err != nil {
		t.Fatal(err)
	}
	if rep.Image == img.Descriptor.Digest || rep.Layers[0].Digest == img.Manifest.Layers[0].Digest {
		t.Errorf("gzip→zstd:chunked kept the source: %+v", rep)
	}
}

// TestCopyPreserveDigests (issue 18): --preserve-digests copies a plain-tar image unchanged
// (nothing to recompress), and refuses a format that would change a layer.
func TestCopyPreserveDigests(t *testing.T) {
	ctx := context.Background()
	layout := t.TempDir()
	makeLayout(t, layout, "", false, genTar(t, 6, 0))
	img := sourceImage(t, layoutSource(t, layout, ""))
	rep, err := push.Copy(ctx, layoutSource(t, layout, ""), layoutDest(t, t.TempDir(), ""), push.WithPreserveDigests())
	if err != nil {
		t.Fatal(err)
	}
	if rep.Image != img.Descriptor.Digest || rep.Layers[0].Digest != img.Manifest.Layers[0].Digest {
		t.Errorf("preserved copy: %+v; source %s", rep, img.Descriptor.Digest)
	}
	_, err = push.Copy(ctx, layoutSource(t, layout, ""), layoutDest(t, t.TempDir(), ""), push.WithPreserveDigests(), push.WithFormat(push.ZstdChunked))
	if !errors.Is(err, errdefs.ErrUnsupported) {
		t.Errorf("preserve + zstd:chunked of a plain layer: err = %v, want unsupported", err)
	}
}
