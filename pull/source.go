package pull

import (
	"context"
	"fmt"
	"io"
	"runtime"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/store"
)

// Image is a resolved image: its manifest and config, verified against their digests.
type Image struct {
	// Name is what the store's ref will be called unless the caller names it.
	Name          string
	Descriptor    ocispec.Descriptor
	ManifestBytes []byte
	Manifest      ocispec.Manifest
	ConfigBytes   []byte
	Config        ocispec.Image
}

// Source is where images come from: a registry or an OCI layout.
type Source interface {
	// Resolve returns the image the source names.
	Resolve(ctx context.Context) (*Image, error)
	// OpenBlob streams a whole blob; the reader fails at EOF unless size and digest match.
	OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error)
	// GetRanges calls fn once per range with exactly that range's bytes, possibly concurrently.
	// An error wrapping errdefs.ErrNeedFull means the blob must be read whole; if it is a
	// registry.WholeBlobError, the source is already sending it (see fallback).
	GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []registry.Range, fn func(registry.Range, io.Reader) error) (registry.RangeReport, error)
}

// NewSource returns the Source for a parsed reference.
func NewSource(ref imageref.Reference, client *registry.Client) (Source, error) {
	switch ref.Transport {
	case imageref.Docker:
		return &registrySource{ref: ref, c: client}, nil
	case imageref.OCILayout:
		return &layoutSource{l: ocilayout.Layout{Dir: ref.Dir}, tag: ref.Tag}, nil
	}
	return nil, fmt.Errorf("reference %s: %w", ref, errdefs.ErrUnsupported)
}

// sourceOf records a registry image's repository, pinned by manifest digest, in its record:
// where fsck --repair re-fetches a damaged layer from.
func sourceOf(src Source, img *Image) []store.ImageOption {
	rs, ok := src.(*registrySource)
	if !ok {
		return nil
	}
	return []store.ImageOption{store.WithSource(rs.ref.Repository().String() + "@" + digest.FromBytes(img.ManifestBytes).String())}
}

type registrySource struct {
	ref imageref.Reference
	c   *registry.Client
}

func (s *registrySource) Resolve(ctx context.Context) (*Image, error) {
	img, err := s.c.Resolve(ctx, s.ref)
	if err != nil {
		return nil, err
	}
	name := s.ref.Repository().String()
	if s.ref.Tag != "" {
		name += ":" + s.ref.Tag
	} else {
		name += "@" + s.ref.Digest.String()
	}
	return &Image{Name: name, Descriptor: img.Descriptor, ManifestBytes: img.ManifestBytes, Manifest: img.Manifest,
		ConfigBytes: img.ConfigBytes, Config: img.Config}, nil
}

func (s *registrySource) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return s.c.FetchBlob(ctx, s.ref.Repository(), desc)
}

func (s *registrySource) GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []registry.Range, fn func(registry.Range, io.Reader) error) (registry.RangeReport, error) {
	return s.c.GetRanges(ctx, s.ref.Repository(), desc, ranges, fn, registry.HandOverWholeBlob())
}

// layoutSource reads an OCI layout; its ranges are plain file reads.
type layoutSource struct {
	l   ocilayout.Layout
	tag string
}

func (s *layoutSource) Resolve(ctx context.Context) (*Image, error) {
	r, err := s.l.Resolve(s.tag)
	if err != nil {
		return nil, err
	}
	return &Image{Name: r.RefName, Descriptor: r.Descriptor, ManifestBytes: r.ManifestBytes, Manifest: r.Manifest,
		ConfigBytes: r.ConfigBytes, Config: r.Config}, nil
}

func (s *layoutSource) OpenBlob(ctx context.Context, desc ocispec.Descriptor) (io.ReadCloser, error) {
	return s.l.Verified(desc)
}

func (s *layoutSource) GetRanges(ctx context.Context, desc ocispec.Descriptor, ranges []registry.Range, fn func(registry.Range, io.Reader) error) (registry.RangeReport, error) {
	rep := registry.RangeReport{Ranges: len(ranges), Spans: len(ranges)}
	f, err := s.l.OpenBlob(desc)
	if err != nil {
		return rep, err
	}
	defer f.Close()
	for _, r := range ranges {
		if r.Offset < 0 || r.Length < 0 || r.End() > desc.Size {
			return rep, fmt.Errorf("range [%d, %d) outside blob %s of %d bytes: %w", r.Offset, r.End(), desc.Digest, desc.Size, errdefs.ErrInvalid)
		}
		rep.BytesRequested += r.Length
		rep.BytesReceived += r.Length
	}
	// Like a registry's parallel requests: several ranges at once, so decompression uses every core.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(runtime.GOMAXPROCS(0) + 1)
	for _, r := range ranges {
		if gctx.Err() != nil {
			break
		}
		g.Go(func() error { return fn(r, io.NewSectionReader(f, r.Offset, r.Length)) })
	}
	if err := g.Wait(); err != nil {
		return rep, err
	}
	return rep, ctx.Err()
}
