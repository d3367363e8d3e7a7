package store

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// PutLayer is Store.PutLayer for a layer whose new objects this batch wrote and committed: the
// batch's record vouches for those and for those it found stored (Stored), with no second
// lookup, and gives the fs-verity digests of those it wrote (no read); every other object the
// TOC names is looked up. The caller still holds the lock it held for the batch.
func (b *Batch) PutLayer(ctx context.Context, l Layer, toc *chunked.TOC, tarSplit []byte) error {
	tocJSON, err := chunked.MarshalTOC(toc) // names that are not UTF-8 stay exact
	if err != nil {
		return err
	}
	l.TOCSize, l.TarSplitSize = int64(len(tocJSON)), int64(len(tarSplit))
	return b.s.putLayer(ctx, l, toc, b, func() ([]byte, []byte, error) {
		return CompressMetadata(tocJSON), CompressMetadata(tarSplit), nil
	})
}

// PutLayerCompressed is Batch.PutLayer for an importer that holds the metadata compressed
// already (a zstd:chunked blob's own TOC and tar-split frames, which it verified; toc is tocZst
// decoded; l gives their uncompressed sizes): they are stored as they are, which saves encoding
// them again. Such a TOC keeps the blob's frame offsets; nothing in the store reads them.
func (b *Batch) PutLayerCompressed(ctx context.Context, l Layer, toc *chunked.TOC, tocZst, tarSplitZst []byte) error {
	return b.s.putLayer(ctx, l, toc, b, func() ([]byte, []byte, error) { return tocZst, tarSplitZst, nil })
}

// checkObjects makes sure every object of a layer about to be recorded is stored: those in the
// record of the committed batch b, the rest by one stat each (relative to the objects
// directory, several at a time).
func (s *Metadata) checkObjects(diffID digest.Digest, objs []digest.Digest, b *Batch) error {
	if b != nil {
		objs = b.rec.written(objs)
	}
	if len(objs) == 0 {
		return nil
	}
	od, err := s.objects.OpenObjectDir()
	if err != nil {
		return err
	}
	defer od.Close()
	if missing := od.missing(objs); missing != "" {
		return fmt.Errorf("layer %s: object %s: %w", diffID, missing, errdefs.ErrNotFound)
	}
	return nil
}
