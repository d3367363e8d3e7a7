package pull

import (
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// sourceOf records a registry image's repository, pinned by manifest digest, in its record:
// where fsck --repair re-fetches a damaged layer from.
func sourceOf(src source.Source, img *source.Image) []store.ImageOption {
	rs, ok := src.(*registry.Source)
	if !ok {
		return nil
	}
	return []store.ImageOption{store.WithSource(rs.Ref().Repository().String() + "@" + digest.FromBytes(img.ManifestBytes).String())}
}
