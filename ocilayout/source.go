package ocilayout

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"sync/atomic"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/source"
)

// Source is the image tagged Tag in a layout (empty: its only image): a source.Source whose
// ranges are plain file reads.
type Source struct {
	Layout Layout
	Tag    string
}

var _ source.Source = Source{}

// NewSource returns the source of the image tagged tag in the layout in dir.
func NewSource(dir, tag string) Source { return Source{Layout: Layout{Dir: dir}, Tag: tag} }

// Resolve reads the image's manifest and config, verified (Layout.Resolve).
func (s Source) Resolve(ctx context.Context) (*source.Image, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Layout.Resolve(s.Tag)
}

// OpenBlob streams a whole blob, verified at EOF (Layout.Verified).
func (s Source) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Layout.Verified(desc)
}

// GetRanges reads each range from the blob file. Like a registry's parallel requests, several
// ranges are read at once, so whoever decompresses them uses every core. It reports only what a
// file read means: the ranges, the bytes asked for and the bytes fn read; no HTTP figures.
func (s Source) GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []source.Range, fn func(source.Range, io.Reader) error) (source.Fetched, error) {
	rep := source.Fetched{Ranges: len(ranges)}
	for _, r := range ranges {
		if r.Offset < 0 || r.Length < 0 || r.End() > desc.Size {
			return rep, fmt.Errorf("range [%d, %d) outside blob %s of %d bytes: %w", r.Offset, r.End(), desc.Digest, desc.Size, errdefs.ErrInvalid)
		}
		rep.BytesRequested += r.Length
	}
	f, err := s.Layout.OpenBlob(desc)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	var read atomic.Int64
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0) + 1)
	for _, r := range ranges {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(r, &countingReader{r: io.NewSectionReader(f, r.Offset, r.Length), n: &read}) })
	}
	err = g.Wait()
	rep.BytesReceived = read.Load()
	if err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}

// countingReader adds the bytes read through it to n.
type countingReader struct {
	r io.Reader
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}
