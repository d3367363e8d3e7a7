// Package imagetest builds OCI images for tests: the config and manifest of a linux/amd64 image
// of given layers, and zstd:chunked images converted from layer tars with the product's writer,
// ready to push to the in-process registry. Only tests import it.
package imagetest

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/registry/registrytest"
)

// Meta returns the config of a linux/amd64 image whose layers have diffIDs, and the manifest
// listing that config and layers.
func Meta(diffIDs []digest.Digest, layers []ocispec.Descriptor) (config, manifest []byte) {
	config, _ = json.Marshal(ocispec.Image{
		Platform: ocispec.Platform{OS: "linux", Architecture: "amd64"},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: diffIDs},
	})
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    layers,
	}
	m.SchemaVersion = 2
	manifest, _ = json.Marshal(m)
	return config, manifest
}

// Image is an image of zstd:chunked layers: the blobs, their descriptors (with the TOC
// annotations), the DiffIDs, the config and the manifest.
type Image struct {
	Blobs    [][]byte
	Descs    []ocispec.Descriptor
	DiffIDs  []digest.Digest
	Config   []byte
	Manifest []byte
}

// Chunked converts layer tars with chunked.Convert and returns the image of them.
func Chunked(t testing.TB, tars ...[]byte) *Image {
	t.Helper()
	img, err := Convert(tars)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// Convert is Chunked with writer options, returning the writer's refusal (for fuzzing).
func Convert(tars [][]byte, opts ...chunked.Option) (*Image, error) {
	img := &Image{}
	for _, tb := range tars {
		var blob bytes.Buffer
		d, err := chunked.Convert(context.Background(), bytes.NewReader(tb), &blob, opts...)
		if err != nil {
			return nil, err
		}
		img.Blobs = append(img.Blobs, blob.Bytes())
		img.Descs = append(img.Descs, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Annotations: d.Annotations})
		img.DiffIDs = append(img.DiffIDs, d.DiffID)
	}
	img.Config, img.Manifest = Meta(img.DiffIDs, img.Descs)
	return img, nil
}

// Push stores the image in reg as repo:tag.
func (img *Image) Push(t testing.TB, reg *registrytest.Registry, repo, tag string) {
	t.Helper()
	for _, b := range img.Blobs {
		reg.PushBlob(t, repo, b)
	}
	reg.PushBlob(t, repo, img.Config)
	reg.PushManifest(t, repo, tag, ocispec.MediaTypeImageManifest, img.Manifest)
}
