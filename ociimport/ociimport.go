// Package ociimport imports an image from an OCI image layout directory (index.json → manifest →
// config + layers) into the store, verifying every digest on the way.
package ociimport

import (
	"context"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// Result is what Import stored.
type Result struct {
	Image store.Image
	// Name is the ref set, and NewLayers how many layers were not stored before.
	Name      string
	NewLayers int
}

// Import imports the image tagged tag (the org.opencontainers.image.ref.name annotation; empty:
// the layout's only image) from the layout in dir and points ref name at it (empty: the tag, or
// the layout's ref name). It holds the store's shared lock throughout, so gc never sees a half
// imported image; objects → layers → image → ref are written in that order.
func Import(ctx context.Context, s *store.Store, dir, tag, name string) (Result, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Result{}, err
	}
	defer unlock()

	l := ocilayout.Layout{Dir: dir}
	r, err := l.Resolve(tag)
	if err != nil {
		return Result{}, err
	}
	manifest, config, m, refName := r.ManifestBytes, r.ConfigBytes, r.Manifest, r.Name
	img, err := store.ParseImage(manifest, config)
	if err != nil {
		return Result{}, err
	}
	res := Result{Name: name}
	if res.Name == "" {
		res.Name = refName
	}
	if res.Name == "" {
		return Result{}, fmt.Errorf("OCI layout %s: the image has no ref name; give one: %w", dir, errdefs.ErrInvalid)
	}
	for i, ld := range m.Layers {
		diffID := img.Layers[i]
		if s.HasLayer(diffID) {
			continue
		}
		if err := importLayer(ctx, s, l, ld, diffID); err != nil {
			return Result{}, err
		}
		res.NewLayers++
	}
	if res.Image, err = s.PutImage(ctx, manifest, config); err != nil {
		return Result{}, err
	}
	if err := s.SetRef(ctx, res.Name, res.Image.ID); err != nil {
		return Result{}, err
	}
	return res, nil
}

// importLayer streams one layer blob into the store, verified by its DiffID and its blob digest.
func importLayer(ctx context.Context, s *store.Store, l ocilayout.Layout, d ocispec.Descriptor, diffID digest.Digest) error {
	v, err := l.Verified(d)
	if err != nil {
		return err
	}
	defer v.Close()
	if _, err := layer.Import(ctx, s, v, layer.Options{DiffID: diffID}); err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	// The decompressor may stop before the end of the blob: read the rest so the blob digest is
	// checked too. (The layer itself is already verified by its DiffID.)
	if _, err := io.Copy(io.Discard, v); err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	return nil
}
