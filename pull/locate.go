package pull

import (
	"context"
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store/layer"
)

// locate finds a layer's TOC and tar-split in its blob: from the annotations or, where they
// give the TOC digest but no position, from the footer at the blob's end (one ranged request,
// as containers/storage did before the position annotation existed); the annotation then
// authenticates the TOC found there. Metadata over the size bound, or a footer that locates
// nothing, is a reason to pull whole.
func locate(ctx context.Context, src source.Source, desc ocispec.Descriptor, lr *LayerReport, bound chunked.ReadOption) (chunked.Location, error) {
	loc, err := chunked.LocateFromAnnotations(desc.Annotations, desc.Size, bound)
	if errors.Is(err, chunked.ErrNeedFooter) {
		loc, err = locateByFooter(ctx, src, desc, lr, bound)
	}
	if errors.Is(err, chunked.ErrMetadataTooLarge) {
		// Not hostile: a layer of very many files. (The error also says ErrInvalid, for
		// readers that have no other way; here there is one.)
		return loc, needFull(fmt.Sprintf("its TOC or tar-split is over the size bound (%v)", err))
	}
	return loc, newerFormat(err)
}

// locateByFooter reads the footer. The footer is not authenticated, so whatever it says that
// cannot be used (no footer, ranges outside the blob) only means that the blob is read whole,
// where its digest and DiffID are checked; the TOC it locates must match the annotation.
func locateByFooter(ctx context.Context, src source.Source, desc ocispec.Descriptor, lr *LayerReport, bound chunked.ReadOption) (chunked.Location, error) {
	n := min(desc.Size, chunked.FooterFetchSize)
	if n <= 0 {
		return chunked.Location{}, needFull("no TOC position annotation, and the blob is empty")
	}
	tail := source.Range{Offset: desc.Size - n, Length: n}
	meta, err := fetchMeta(ctx, src, desc, []source.Range{tail}, lr)
	if err != nil {
		return chunked.Location{}, err
	}
	loc, err := chunked.LocateFromFooter(meta[tail.Offset], desc.Size, bound)
	if errors.Is(err, chunked.ErrMetadataTooLarge) {
		return loc, err
	}
	if err != nil {
		return chunked.Location{}, needFull(fmt.Sprintf("no TOC position annotation, and the footer does not locate the TOC (%v)", err))
	}
	loc.TOCDigest, err = chunked.TOCDigest(desc.Annotations)
	return loc, err
}

// parseFetched is chunked.ParseDeferred for a fetched tar-split, with the check that the TOC
// can carry every name exactly (namesFitTOC) before anything is fetched or compared, and, if
// the comparison fails, every link target (explainMismatch).
func parseFetched(loc chunked.Location, tocBlob, tarSplitBlob []byte, bound chunked.ReadOption) (*chunked.Layer, *layer.FetchedTarSplit, error) {
	l, check, err := chunked.ParseDeferred(loc, tocBlob, tarSplitBlob, bound)
	if err != nil {
		return nil, nil, newerFormat(err)
	}
	if err := namesFitTOC(l.TarSplitEntries); err != nil {
		return nil, nil, err
	}
	return l, &layer.FetchedTarSplit{Entries: l.TarSplitEntries, Check: explainMismatch(l.TarSplitEntries, check),
		Zst: tarSplitBlob, Size: loc.TarSplitUncompressed}, nil
}
