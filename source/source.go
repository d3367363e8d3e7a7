// Package source owns what an image is read from: the Source interface that a registry and an
// OCI layout implement and that pull, push and copy consume, the resolved Image it returns, the
// byte Ranges of blobs read from it, and Fetched, what one ranged read cost.
//
// It is a leaf: it names the types both sides share, so that neither the transports nor their
// consumers depend on each other.
package source

import (
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// Source is where an image comes from: a registry repository or an OCI layout.
//
// The fallback contract (docs/design.md, "Falling back to a full pull"): GetRanges fails with an
// error wrapping errdefs.ErrNeedFull when the blob must be read whole. A source that is already
// sending the whole blob (a registry that ignored Range) says so with an error carrying that
// stream (registry.WholeBlobError), so that the blob is not asked for twice.
type Source interface {
	// Resolve returns the image the source names, its manifest and config verified.
	Resolve(ctx context.Context) (*Image, error)
	// OpenBlob streams a whole blob; the reader fails at EOF unless size and digest match.
	OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
	// GetRanges calls fn once per range with a reader of exactly that range's bytes, possibly
	// concurrently. Ranges must not overlap and must lie within desc.Size. The caller verifies
	// the content: GetRanges guarantees only the offsets.
	GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []Range, fn func(Range, io.Reader) error) (Fetched, error)
}

// Image is a resolved image: the manifest chosen for the platform and its config, both verified
// against their digests.
type Image struct {
	// Name is what the store's ref will be called unless the caller names it: REPOSITORY:TAG or
	// REPOSITORY@DIGEST for a registry, the ref name annotation for a layout (possibly empty).
	Name string
	// Index describes the index the manifest was chosen from; nil when the source named a manifest.
	Index *ocispec.Descriptor
	// Descriptor describes the manifest bytes (media type, digest, size; Platform when chosen
	// from an index).
	Descriptor    ocispec.Descriptor
	ManifestBytes []byte
	Manifest      ocispec.Manifest
	ConfigBytes   []byte
	Config        ocispec.Image
}

// Range is a byte range of a blob: Length bytes from Offset.
type Range struct {
	Offset int64 `json:"offset"`
	Length int64 `json:"length"`
}

// End is the offset just past the range.
func (r Range) End() int64 { return r.Offset + r.Length }

// Fetched is what one GetRanges call read and what it cost: a pull reports it per layer.
//
// Ranges, BytesRequested and BytesReceived mean the same for every source. The other fields
// count HTTP requests and a registry's fallbacks; a source that sends none (an OCI layout, read
// with plain file reads) leaves them zero.
type Fetched struct {
	Ranges int `json:"ranges"` // ranges asked for
	// BytesRequested sums the byte ranges asked of the source (for a registry: merged gaps and
	// resumptions included).
	BytesRequested int64 `json:"bytesRequested"`
	// BytesReceived are the bytes read from the source (for a registry: body bytes read from
	// the network).
	BytesReceived int64 `json:"bytesReceived"`

	Spans int `json:"spans"` // HTTP: ranges after merging
	// Requests are HTTP requests sent, retries included.
	Requests int64 `json:"requests"`
	Retries  int64 `json:"retries"`
	// RangesIgnored: the server answered 200 with the whole blob; the ranges were cut out of
	// that stream (never downloaded twice), and BytesReceived reaches up to the last range, or
	// the stream was handed over unread (registry.WholeBlobError).
	RangesIgnored bool `json:"rangesIgnored"`
	// Splits counts halvings of the ranges per request after 400/416/501 answers.
	Splits int64 `json:"splits"`
}
