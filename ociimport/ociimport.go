// Package ociimport imports an image from an OCI image layout directory into the store: a pull
// in full mode from the layout (pull.Pull over ocilayout.Source with pull.WithoutPartial), which
// verifies every digest on the way, reported as an import (the name set, the new layers).
package ociimport

import (
	"context"

	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/store"
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
// the layout's ref name). Like every pull it holds the store's shared lock throughout, so gc
// never sees a half imported image, and writes objects → layers → image → ref in that order.
// Every layer is read whole, as import always did: zstd:chunked or not, its blob is verified.
// It takes the whole store, not a role: it is a pull, which writes both under the store's lock.
func Import(ctx context.Context, s *store.Store, dir, tag, name string) (Result, error) {
	rep, err := pull.Pull(ctx, s, ocilayout.NewSource(dir, tag), pull.WithoutPartial(), pull.WithName(name))
	if err != nil {
		return Result{}, err
	}
	img, err := s.Image(ctx, rep.Image)
	if err != nil {
		return Result{}, err
	}
	res := Result{Image: img, Name: rep.Name}
	for _, l := range rep.Layers {
		if l.Mode != pull.ModePresent {
			res.NewLayers++
		}
	}
	return res, nil
}
