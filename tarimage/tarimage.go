// Package tarimage makes a single-layer image in the store from a root filesystem tar (plain,
// gzip or zstd), as `podman import` does. Image archives (docker-archive, oci-archive) are
// refused: they belong to kura load.
package tarimage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/archive"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
	"github.com/kura-oci/kura/tarstream"
)

// Options describe the image to make.
type Options struct {
	// Created is the config's creation time (default: now). Fix it for reproducible images.
	Created time.Time
	// Comment goes into the config's history.
	Comment string
}

// Import reads a tar from r, stores it as one layer, and records an image named name whose
// manifest references the uncompressed layer (media type tar, digest = DiffID), so the store can
// serve that blob exactly by rebuilding the tar. It holds the store's shared lock throughout,
// and so takes the whole store: it writes both roles (objects and layer, then image and ref).
func Import(ctx context.Context, s *store.Store, r io.Reader, name string, opts Options) (store.Image, error) {
	if name == "" {
		return store.Image{}, fmt.Errorf("an imported tar needs a name: %w", errdefs.ErrInvalid)
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return store.Image{}, err
	}
	defer unlock()
	plain, err := tarstream.Decompress(r)
	if err != nil {
		return store.Image{}, err
	}
	defer plain.Close()
	// An image archive (podman save) is no root file system: refuse it rather than make an
	// image whose files are the archive's blobs.
	guard := archive.NewGuard(plain)
	l, err := layer.Import(ctx, s, guard, layer.Options{})
	if gerr := guard.Close(); gerr != nil {
		return store.Image{}, gerr
	}
	if err != nil {
		return store.Image{}, err
	}
	manifest, config, err := Describe(l.DiffID, l.TarSize, opts)
	if err != nil {
		return store.Image{}, err
	}
	img, err := s.PutImage(ctx, manifest, config)
	if err != nil {
		return store.Image{}, err
	}
	if err := s.SetRef(ctx, name, img.ID); err != nil {
		return store.Image{}, err
	}
	return img, nil
}

// Describe returns the manifest and config of a single-layer image whose layer is the
// uncompressed tar with the given DiffID and size.
func Describe(diffID digest.Digest, tarSize int64, opts Options) (manifest, config []byte, err error) {
	created := opts.Created
	if created.IsZero() {
		created = time.Now().UTC()
	}
	created = created.UTC()
	cfg := ocispec.Image{
		Created:  &created,
		Platform: ocispec.Platform{OS: "linux", Architecture: runtime.GOARCH},
		RootFS:   ocispec.RootFS{Type: "layers", DiffIDs: []digest.Digest{diffID}},
		History:  []ocispec.History{{Created: &created, CreatedBy: "kura import", Comment: opts.Comment}},
	}
	if config, err = json.Marshal(cfg); err != nil {
		return nil, nil, err
	}
	m := ocispec.Manifest{
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))},
		Layers:    []ocispec.Descriptor{{MediaType: ocispec.MediaTypeImageLayer, Digest: diffID, Size: tarSize}},
	}
	m.SchemaVersion = 2
	if manifest, err = json.Marshal(m); err != nil {
		return nil, nil, err
	}
	return manifest, config, nil
}
