package push_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// pushMultiPlatform stores an index of two images (plain tar layers) as test/multi:v1.
func pushMultiPlatform(t *testing.T, reg *registrytest.Registry) (idx ocispec.Index, body []byte, tars map[string][]byte) {
	t.Helper()
	tars = map[string][]byte{"amd64": genTar(t, 11, 0), "arm64": genTar(t, 12, 0)}
	for _, arch := range []string{"amd64", "arm64"} {
		img := reg.PushImage(t, "test/multi", "", ocispec.Platform{OS: "linux", Architecture: arch}, ocispec.MediaTypeImageLayer, tars[arch])
		idx.Manifests = append(idx.Manifests, img.Manifest)
	}
	idx.MediaType, idx.SchemaVersion = ocispec.MediaTypeImageIndex, 2
	body, _ = json.Marshal(idx)
	reg.PushManifest(t, "test/multi", "v1", ocispec.MediaTypeImageIndex, body)
	return idx, body, tars
}

// TestCopyAll (issue 18): --all converts every platform's image and pushes a new index naming
// them with their platforms; each pulls back to its own tar. With WithPreserveDigests the
// index is copied byte for byte.
func TestCopyAll(t *testing.T) {
	ctx := context.Background()
	reg := registrytest.New(t)
	c := pushClient(http.DefaultTransport)
	src, srcBody, tars := pushMultiPlatform(t, reg)
	ref, _ := imageref.Parse(reg.Host + "/test/multi:v1")

	rep, err := push.CopyAll(ctx, ref, c, registryDest(t, c, reg.Host+"/test/all:v1"))
	if err != nil {
		t.Fatal(err)
	}
	repo := imageref.Repository{Domain: reg.Host, Path: "test/all"}
	desc, body, err := c.GetManifest(ctx, repo, "v1")
	if err != nil {
		t.Fatal(err)
	}
	idx, err := registry.ParseIndex(body)
	if err != nil || !registry.IsIndex(desc.MediaType) || desc.Digest != rep.Image || len(idx.Manifests) != 2 || len(rep.Images) != 2 {
		t.Fatalf("index %s (%s, report %s): %v, %d entries", desc.Digest, desc.MediaType, rep.Image, err, len(idx.Manifests))
	}
	for i, e := range idx.Manifests {
		arch := src.Manifests[i].Platform.Architecture
		if e.Platform == nil || e.Platform.Architecture != arch || e.Digest == src.Manifests[i].Digest {
			t.Errorf("entry %d: %+v, source %+v", i, e, src.Manifests[i])
		}
		_, mb, err := c.GetManifest(ctx, repo, e.Digest.String())
		if err != nil {
			t.Fatal(err)
		}
		m, _ := registry.ParseManifest(mb)
		if len(m.Layers) != 1 || m.Layers[0].Annotations[chunked.AnnotationTOCDigest] == "" {
			t.Errorf("%s image: layers %+v, want one zstd:chunked", arch, m.Layers)
		}
		s2, img2, _ := pullInto(t, pushClient(http.DefaultTransport, registry.WithPlatform(*e.Platform)), reg.Host+"/test/all:v1")
		if got := exportAll(t, s2, img2); len(got) != 1 || !bytes.Equal(got[0], tars[arch]) {
			t.Errorf("%s image pulls back different", arch)
		}
	}

	rep, err = push.CopyAll(ctx, ref, c, registryDest(t, c, reg.Host+"/test/same:v1"), push.WithPreserveDigests())
	if err != nil {
		t.Fatal(err)
	}
	_, body, err = c.GetManifest(ctx, imageref.Repository{Domain: reg.Host, Path: "test/same"}, "v1")
	if err != nil || !bytes.Equal(body, srcBody) || rep.Image != sha(srcBody) {
		t.Errorf("preserved index: %v, equal %v, report %s", err, bytes.Equal(body, srcBody), rep.Image)
	}
}
