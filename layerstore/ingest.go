package layerstore

import (
	"context"
	"encoding/json"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// Ingest stores the layer tar r (a directory someone else filled: containerd's plain path) as
// a one-layer image of its own, so that its files join the store with file-level dedup against
// every other image, and records a checkout use of keep (a directory that lives exactly as long
// as the caller needs the layer): gc keeps the image, its layer and objects while keep exists.
// It returns the image and the layer's DiffID, for MountLayer.
func (l *Layers) Ingest(ctx context.Context, r io.Reader, keep string) (store.Image, digest.Digest, error) {
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return store.Image{}, "", err
	}
	defer unlock()
	im, err := layer.Import(ctx, l.s, r, layer.Options{})
	if err != nil {
		return store.Image{}, "", fmt.Errorf("layer store: ingesting a layer: %w", err)
	}
	img, err := l.layerRecord(ctx, im.DiffID)
	if err != nil {
		return store.Image{}, "", fmt.Errorf("layer store: recording layer %s: %w", im.DiffID, err)
	}
	if _, err := l.s.AddUse(ctx, store.Use{Kind: store.UseCheckout, Image: img.ID, Target: keep}); err != nil {
		return store.Image{}, "", err
	}
	return img, im.DiffID, nil
}

// layerRecord records (once) the one-layer image of the stored layer diffID and returns it:
// what a per-layer mount's or an ingest's use names, so that the use keeps exactly that layer.
// The caller holds the store's shared lock. ErrNotFound if the layer is not stored (gc freed it).
func (l *Layers) layerRecord(ctx context.Context, diffID digest.Digest) (store.Image, error) {
	sl, err := l.s.Layer(ctx, diffID)
	if err != nil {
		return store.Image{}, fmt.Errorf("layer store: %w", err)
	}
	manifest, config, err := layerImage(sl)
	if err != nil {
		return store.Image{}, err
	}
	img, err := l.s.PutImage(ctx, manifest, config)
	if err != nil {
		return store.Image{}, fmt.Errorf("layer store: recording layer %s: %w", diffID, err)
	}
	return img, nil
}

// layerImage is the manifest and config of an image holding only sl: the uncompressed tar as
// its layer blob (which the store does not keep; Kura rebuilds it from the layer).
func layerImage(sl store.Layer) (manifest, config []byte, err error) {
	config, err = json.Marshal(ocispec.Image{Platform: ocispec.Platform{OS: "linux"},
		RootFS: ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{sl.DiffID}}})
	if err != nil {
		return nil, nil, err
	}
	manifest, err = json.Marshal(ocispec.Manifest{Versioned: specs.Versioned{SchemaVersion: 2}, MediaType: ocispec.MediaTypeImageManifest,
		Config: ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers: []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: sl.DiffID, Size: sl.TarSize}}})
	return manifest, config, err
}

// MountLayer serves the layer diffID of the stored image as Lookup does (a composefs mount with
// its whiteouts kept for the overlay stacked on it, or a checkout on an older kernel) and
// returns its directory. A mount found in place is reused: this is also how a restart makes a
// layer present again.
func (l *Layers) MountLayer(ctx context.Context, image, diffID digest.Digest) (string, error) {
	return l.layerDir(ctx, store.Image{ID: image, Layers: []digest.Digest{diffID}}, diffID)
}
