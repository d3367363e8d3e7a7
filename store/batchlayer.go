package store

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
)

// PutLayer is Store.PutLayer for a layer whose new objects this batch wrote and committed,
// given as the entries of its model (the TOC stored is chunked.EncodeTOC of them): the batch's
// record vouches for those objects and for those it found stored (Stored), with no second
// lookup, and gives the fs-verity digests of those it wrote (no read); every other object the
// entries name is looked up. The caller still holds the lock it held for the batch.
func (b *Batch) PutLayer(ctx context.Context, l Layer, entries []layerfs.Entry, tarSplit []byte) error {
	tocJSON, err := chunked.MarshalTOC(chunked.EncodeTOC(entries)) // names that are not UTF-8 stay exact
	if err != nil {
		return err
	}
	l.TOCSize, l.TarSplitSize = int64(len(tocJSON)), int64(len(tarSplit))
	return b.s.putLayer(ctx, l, entries, b, func() ([]byte, []byte, error) {
		return CompressMetadata(tocJSON), CompressMetadata(tarSplit), nil
	})
}

// PutLayerCompressed is Batch.PutLayer for an importer that holds the metadata compressed
// already (a zstd:chunked blob's own TOC and tar-split frames, which it verified; entries are
// that TOC as chunked.Parse decoded it; l gives their uncompressed sizes): they are stored as
// they are, which saves encoding them again, and the TOC is not decoded a second time. Such a
// TOC keeps the blob's frame offsets; nothing in the store reads them.
func (b *Batch) PutLayerCompressed(ctx context.Context, l Layer, entries []layerfs.Entry, tocZst, tarSplitZst []byte) error {
	return b.s.putLayer(ctx, l, entries, b, func() ([]byte, []byte, error) { return tocZst, tarSplitZst, nil })
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
