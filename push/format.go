package push

import (
	"bufio"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/iocount"
	"github.com/kura-oci/kura/tarstream"
)

// Format is the compression of the layers written.
type Format string

// Formats, named as skopeo's --dest-compress-format names them.
const (
	ZstdChunked Format = "zstd:chunked"
	Zstd        Format = "zstd"
	Gzip        Format = "gzip"
)

// ParseFormat accepts "zstd:chunked", "zstd" and "gzip".
func ParseFormat(s string) (Format, error) {
	switch f := Format(s); f {
	case ZstdChunked, Zstd, Gzip:
		return f, nil
	}
	return "", fmt.Errorf("compression format %q: want zstd:chunked, zstd or gzip: %w", s, errdefs.ErrInvalid)
}

// MediaType is the OCI layer media type of the format.
func (f Format) MediaType() string {
	if f == Gzip {
		return ocispec.MediaTypeImageLayerGzip
	}
	return ocispec.MediaTypeImageLayerZstd
}

// DefaultLevel is the level the reference tools use: containers/storage compresses zstd:chunked
// at zstd level 10, containers/image plain zstd at klauspost's default (zstd 3) and gzip at
// level 6 (pgzip's default).
func (f Format) DefaultLevel() int {
	switch f {
	case ZstdChunked:
		return 10
	case Zstd:
		return 3
	}
	return 6
}

// CheckLevel bounds a level for the format (1–22 for zstd, 1–9 for gzip).
func (f Format) CheckLevel(level int) error {
	lo, hi := 1, 22
	if f == Gzip {
		hi = 9
	}
	if level < lo || level > hi {
		return fmt.Errorf("%s level %d not in %d–%d: %w", f, level, lo, hi, errdefs.ErrInvalid)
	}
	return nil
}

// gzipBlockSize fixes pgzip's block size: the output depends on it, not on how many blocks are
// compressed at once.
const gzipBlockSize = 1 << 20

// compress reads a tar stream (plain, gzip or zstd) from r and writes it to w in format f.
// The descriptor it returns carries the blob's digest and size, the DiffID of the tar and, for
// zstd:chunked, the TOC annotations. The bytes written depend on f and level only, never on
// concurrency.
func compress(ctx context.Context, r io.Reader, w io.Writer, f Format, level, concurrency int) (chunked.Descriptor, error) {
	if f == ZstdChunked {
		return chunked.Convert(ctx, r, w, chunked.WithLevel(level), chunked.WithConcurrency(concurrency))
	}
	tar, err := tarstream.Decompress(r)
	if err != nil {
		return chunked.Descriptor{}, err
	}
	defer tar.Close()
	blobHash := sha256.New()
	out := &iocount.Writer{W: io.MultiWriter(w, blobHash)}
	buffered := bufio.NewWriterSize(out, 1<<20)
	var enc io.WriteCloser
	switch f {
	case Zstd:
		enc, err = zstd.NewWriter(buffered, zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
			zstd.WithEncoderConcurrency(max(1, concurrency)))
	case Gzip:
		var gz *pgzip.Writer
		gz, err = pgzip.NewWriterLevel(buffered, level)
		if err == nil {
			// A fixed header: no time stamp (pgzip would write the zero time.Time's), no name.
			gz.ModTime = time.Unix(0, 0)
			err = gz.SetConcurrency(gzipBlockSize, max(1, concurrency))
		}
		enc = gz
	default:
		err = fmt.Errorf("compression format %q: %w", f, errdefs.ErrUnsupported)
	}
	if err != nil {
		return chunked.Descriptor{}, err
	}
	diffHash := sha256.New()
	if _, err := io.Copy(enc, &ctxReader{ctx: ctx, r: io.TeeReader(tar, diffHash)}); err != nil {
		enc.Close()
		return chunked.Descriptor{}, err
	}
	if err := enc.Close(); err != nil {
		return chunked.Descriptor{}, err
	}
	if err := buffered.Flush(); err != nil {
		return chunked.Descriptor{}, err
	}
	return chunked.Descriptor{
		MediaType: f.MediaType(),
		Digest:    digest.NewDigest(digest.SHA256, blobHash),
		Size:      out.N,
		DiffID:    digest.NewDigest(digest.SHA256, diffHash),
	}, nil
}

// ctxReader stops a long copy when ctx is cancelled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

// dockerLayerGzip is Docker schema 2's media type of a gzip layer (the same bytes as OCI's).
const dockerLayerGzip = "application/vnd.docker.image.rootfs.diff.tar.gzip"

// Holds reports whether a source layer already is in format f, so that copying it by digest
// writes what recompressing would have meant: zstd:chunked needs a zstd blob whose annotations
// locate its TOC; zstd accepts any zstd blob (zstd:chunked is zstd); gzip any gzip blob. The
// level of a layer kept is its own.
func (f Format) Holds(desc ocispec.Descriptor) bool {
	switch f {
	case ZstdChunked:
		if desc.MediaType != ocispec.MediaTypeImageLayerZstd {
			return false
		}
		_, err := chunked.LocateFromAnnotations(desc.Annotations, desc.Size)
		return err == nil
	case Zstd:
		return desc.MediaType == ocispec.MediaTypeImageLayerZstd
	case Gzip:
		return desc.MediaType == ocispec.MediaTypeImageLayerGzip || desc.MediaType == dockerLayerGzip
	}
	return false
}

// isLayerTar reports media types of layer tars (plain or compressed, OCI or Docker), the blobs
// Copy can recompress.
func isLayerTar(mediaType string) bool {
	return strings.HasPrefix(mediaType, "application/vnd.oci.image.layer.") ||
		strings.HasPrefix(mediaType, "application/vnd.docker.image.rootfs.")
}

// ociLayer is desc as an OCI manifest names it (a Docker gzip layer under OCI's media type: the
// same bytes).
func ociLayer(desc ocispec.Descriptor) ocispec.Descriptor {
	if desc.MediaType == dockerLayerGzip {
		desc.MediaType = ocispec.MediaTypeImageLayerGzip
	}
	desc.URLs, desc.Platform = nil, nil
	return desc
}
