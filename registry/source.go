package registry

import (
	"context"
	"io"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/source"
)

// Source is the image a registry reference names, read through a Client: a source.Source.
type Source struct {
	c   *Client
	ref imageref.Reference
}

var _ source.Source = (*Source)(nil)

// NewSource returns the source of the image ref names (a docker:// reference), read through c.
func NewSource(c *Client, ref imageref.Reference) *Source { return &Source{c: c, ref: ref} }

// Ref is the reference the source reads.
func (s *Source) Ref() imageref.Reference { return s.ref }

// Resolve fetches the manifest and config (Client.Resolve).
func (s *Source) Resolve(ctx context.Context) (*source.Image, error) { return s.c.Resolve(ctx, s.ref) }

// OpenBlob streams a whole blob of the reference's repository, verified at EOF.
func (s *Source) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return s.c.FetchBlob(ctx, s.ref.Repository(), desc)
}

// GetRanges is Client.GetRanges with HandOverWholeBlob: the source's callers pull a blob whole
// when the registry ignores Range, and then read the stream it already sent (WholeBlobError).
func (s *Source) GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []source.Range, fn func(source.Range, io.Reader) error) (source.Fetched, error) {
	return s.c.GetRanges(ctx, s.ref.Repository(), desc, ranges, fn, HandOverWholeBlob())
}
