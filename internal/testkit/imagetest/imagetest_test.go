package imagetest_test

import (
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
)

// A converted image names its layers by their blobs, its DiffIDs are the tars' digests, and the
// manifest names the config.
func TestChunked(t *testing.T) {
	tars := [][]byte{tartest.Tar(t, tartest.File("a", "alpha")), tartest.Tar(t, tartest.File("b", "bravo"))}
	img := imagetest.Chunked(t, tars...)
	var m ocispec.Manifest
	var cfg ocispec.Image
	if err := json.Unmarshal(img.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(img.Config, &cfg); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.Config.Digest != digest.FromBytes(img.Config) || len(m.Layers) != 2 {
		t.Fatalf("manifest %s", img.Manifest)
	}
	for i, tb := range tars {
		if img.DiffIDs[i] != digest.FromBytes(tb) || cfg.RootFS.DiffIDs[i] != img.DiffIDs[i] {
			t.Errorf("layer %d: DiffID %s, config %v, tar %s", i, img.DiffIDs[i], cfg.RootFS.DiffIDs, digest.FromBytes(tb))
		}
		if m.Layers[i].Digest != digest.FromBytes(img.Blobs[i]) || m.Layers[i].Size != int64(len(img.Blobs[i])) {
			t.Errorf("layer %d: descriptor %+v does not name its blob", i, m.Layers[i])
		}
	}
	if cfg.OS != "linux" || cfg.Architecture != "amd64" {
		t.Errorf("platform %s/%s", cfg.OS, cfg.Architecture)
	}
}
