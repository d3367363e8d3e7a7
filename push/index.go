package push

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
)

// IndexReport is what copying every image of an index did.
type IndexReport struct {
	// Image is the digest of the index written (of the manifest, when the source named one).
	Image       digest.Digest `json:"image"`
	Destination string        `json:"destination"`
	Images      []*Report     `json:"images"`
	Seconds     float64       `json:"seconds"`
}

// CopyAll copies every image of the index a registry reference names (skopeo copy --all): each
// platform's image as Copy does, stored by digest, then an index naming them under the
// destination's tag. The index is copied as it is when no image changed (always with
// WithPreserveDigests); else it is the source's with each entry's digest, size and media type
// replaced. A reference to a single manifest is copied as Copy does.
func CopyAll(ctx context.Context, ref imageref.Reference, client *registry.Client, dest Destination, opts ...Option) (*IndexReport, error) {
	start := time.Now()
	if ref.Transport != imageref.Docker {
		return nil, fmt.Errorf("copying every image of %s: only registry sources are supported: %w", ref, errdefs.ErrUnsupported)
	}
	desc, body, err := client.GetManifest(ctx, ref.Repository(), ref.Identifier())
	if err != nil {
		return nil, err
	}
	rep := &IndexReport{Destination: dest.String()}
	if !registry.IsIndex(desc.MediaType) {
		src := registry.NewSource(client, ref)
		one, err := Copy(ctx, src, dest, opts...)
		if err != nil {
			return nil, err
		}
		rep.Image, rep.Images, rep.Seconds = one.Image, []*Report{one}, time.Since(start).Seconds()
		return rep, nil
	}
	idx, err := registry.ParseIndex(body)
	if err != nil {
		return nil, fmt.Errorf("index %s of %s: %w", desc.Digest, ref, err)
	}
	changed := false
	for i, child := range idx.Manifests {
		if !registry.IsManifest(child.MediaType) {
			return nil, fmt.Errorf("index %s of %s, entry %d: media type %q: %w", desc.Digest, ref, i+1, child.MediaType, errdefs.ErrUnsupported)
		}
		cref := ref
		cref.Tag, cref.Digest = "", child.Digest
		src := registry.NewSource(client, cref)
		one, mDesc, err := copyImage(ctx, src, dest, true, opts)
		if err != nil {
			return nil, fmt.Errorf("image %d of %d (%s): %w", i+1, len(idx.Manifests), platformOf(child), err)
		}
		rep.Images = append(rep.Images, one)
		if mDesc.Digest != child.Digest {
			changed = true
			idx.Manifests[i].Digest, idx.Manifests[i].Size, idx.Manifests[i].MediaType = mDesc.Digest, mDesc.Size, mDesc.MediaType
		}
	}
	if changed {
		// Entries now name OCI manifests; an OCI index names them.
		idx.MediaType = ocispec.MediaTypeImageIndex
		if body, err = json.Marshal(idx); err != nil {
			return nil, err
		}
		desc = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageIndex, Digest: digest.FromBytes(body), Size: int64(len(body))}
	}
	if err := dest.PutManifest(ctx, desc, body); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	indexLog(opts).Debug("index", "digest", desc.Digest, "mediaType", desc.MediaType, "images", len(idx.Manifests), "changed", changed)
	rep.Image, rep.Seconds = desc.Digest, time.Since(start).Seconds()
	return rep, nil
}

// platformOf names an index entry's platform for messages.
func platformOf(d ocispec.Descriptor) string {
	if d.Platform == nil {
		return d.Digest.String()
	}
	p := d.Platform.OS + "/" + d.Platform.Architecture
	if d.Platform.Variant != "" {
		p += "/" + d.Platform.Variant
	}
	return p
}

// indexLog is the logger opts set (WithLogger), for CopyAll's own lines.
func indexLog(opts []Option) *slog.Logger {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	return o.log
}
