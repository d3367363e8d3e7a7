package chunked

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// Open locates and parses the metadata of a whole blob: by annotations if ann marks a
// zstd:chunked layer, else by the footer.
func Open(blob io.ReaderAt, size int64, ann map[string]string, opts ...ReadOption) (*Layer, Location, error) {
	var loc Location
	var err error
	byFooter := !IsChunked(ann)
	if !byFooter {
		loc, err = LocateFromAnnotations(ann, size, opts...)
		byFooter = errors.Is(err, ErrNeedFooter)
	}
	if byFooter {
		tail := make([]byte, min(size, FooterFetchSize))
		if _, err := blob.ReadAt(tail, size-int64(len(tail))); err != nil {
			return nil, Location{}, fmt.Errorf("reading footer: %w", err)
		}
		loc, err = LocateFromFooter(tail, size, opts...)
		if err == nil && IsChunked(ann) {
			loc.TOCDigest, err = TOCDigest(ann) // the footer is located, the annotation authenticates
		}
	}
	if err != nil {
		return nil, Location{}, err
	}
	toc := make([]byte, loc.TOC.Length)
	if _, err := blob.ReadAt(toc, loc.TOC.Offset); err != nil {
		return nil, Location{}, fmt.Errorf("reading TOC: %w", err)
	}
	var ts []byte
	if loc.TarSplit.Length > 0 {
		ts = make([]byte, loc.TarSplit.Length)
		if _, err := blob.ReadAt(ts, loc.TarSplit.Offset); err != nil {
			return nil, Location{}, fmt.Errorf("reading tar-split: %w", err)
		}
	}
	l, err := Parse(loc, toc, ts, opts...)
	return l, loc, err
}

// Verify runs every check on a whole blob against its descriptor: size and digest; that plain
// zstd decompression gives a tar with the DiffID (what a full pull sees); the metadata rules of
// Parse; every file's content against its digest; and the DiffID of the tar rebuilt from
// tar-split and the file frames (what a partial pull sees). Layers without tar-split (old
// format) get every check but the last.
func Verify(ctx context.Context, blob io.ReaderAt, desc Descriptor, opts ...ReadOption) (*Layer, error) {
	if desc.Size < 0 {
		return nil, invalidf("descriptor size %d", desc.Size)
	}
	sr := io.NewSectionReader(blob, 0, desc.Size)
	blobDigest := sha256.New()
	zr, err := zstd.NewReader(io.TeeReader(sr, blobDigest), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow))
	if err != nil {
		return nil, err
	}
	diffID := sha256.New()
	_, zErr := io.Copy(diffID, ctxReader{ctx, zr})
	zr.Close()
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	// The blob digest comes first: a blob that is not the one described is reported as such
	// even when it does not decompress.
	if _, err := io.Copy(blobDigest, sr); err != nil { // bytes the decoder did not read, if any
		return nil, err
	}
	if n, _ := blob.ReadAt(make([]byte, 1), desc.Size); n > 0 {
		return nil, fmt.Errorf("blob is longer than the descriptor's %d bytes: %w", desc.Size, errdefs.ErrDigestMismatch)
	}
	if got := digest.NewDigest(digest.SHA256, blobDigest); got != desc.Digest {
		return nil, fmt.Errorf("blob digest %s, descriptor says %s: %w", got, desc.Digest, errdefs.ErrDigestMismatch)
	}
	if zErr != nil {
		return nil, fmt.Errorf("decompressing the blob: %w: %w", errdefs.ErrInvalid, zErr)
	}
	if got := digest.NewDigest(digest.SHA256, diffID); desc.DiffID != "" && got != desc.DiffID {
		return nil, fmt.Errorf("decompressed blob has DiffID %s, descriptor says %s: %w", got, desc.DiffID, errdefs.ErrDigestMismatch)
	}
	if loc, err := LocateFromAnnotations(desc.Annotations, desc.Size, opts...); err == nil {
		// A reader without the annotations goes by the footer: it must find the same metadata.
		tail := make([]byte, min(desc.Size, FooterFetchSize))
		if _, err := blob.ReadAt(tail, desc.Size-int64(len(tail))); err != nil {
			return nil, fmt.Errorf("reading footer: %w", err)
		}
		floc, err := LocateFromFooter(tail, desc.Size, opts...)
		if err != nil {
			return nil, fmt.Errorf("footer: %w", err)
		}
		if floc.TOC != loc.TOC || floc.TOCUncompressed != loc.TOCUncompressed ||
			(floc.TarSplit.Length > 0 && (floc.TarSplit != loc.TarSplit || floc.TarSplitUncompressed != loc.TarSplitUncompressed)) {
			return nil, invalidf("footer locates TOC %+v and tar-split %+v, annotations %+v and %+v", floc.TOC, floc.TarSplit, loc.TOC, loc.TarSplit)
		}
	}
	l, _, err := Open(blob, desc.Size, desc.Annotations, opts...)
	if err != nil {
		return nil, err
	}
	if l.TarSplit == nil {
		for i := range l.Files {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			if err := ReadFile(blob, &l.Files[i], io.Discard); err != nil {
				return nil, err
			}
		}
		return l, nil
	}
	h := sha256.New()
	if err := l.RebuildTar(blob, ctxWriter{ctx, h}); err != nil {
		return nil, fmt.Errorf("rebuilding the tar from tar-split: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); desc.DiffID != "" && got != desc.DiffID {
		return nil, fmt.Errorf("tar rebuilt from tar-split has DiffID %s, descriptor says %s: %w", got, desc.DiffID, errdefs.ErrDigestMismatch)
	}
	return l, nil
}

type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

type ctxWriter struct {
	ctx context.Context
	w   io.Writer
}

func (c ctxWriter) Write(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.w.Write(p)
}
