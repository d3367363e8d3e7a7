package chunked

import (
	"fmt"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/tarstream"
)

// Limits on what a layer's metadata may declare, relative to the bytes that carry it. The byte
// bounds (WithMaxMetadataSize) alone let a megabyte of compressed JSON declare millions of
// minimal entries, each of which costs hundreds of bytes decoded; these bounds are checked while
// decoding, entry by entry and line by line, so a bomb is refused before its entries cost memory.
//
// The ratios sit well below what honest writers produce. The most compressible honest layers we
// could write (50,000 empty files, directories or symlinks with sequential names, by Convert at
// the reference's level) take ≥ 12 blob bytes per TOC entry (tar headers in the data frames, TOC,
// tar-split) and ≥ 4.5 compressed tar-split bytes per line; the limits ask for 4 and 1. The
// absolute caps sit above what the 150 MiB metadata bound lets an honest layer hold (a tar header
// costs ~790 tar-split bytes, a chunk entry ~200 TOC bytes).
const (
	// MaxTOCEntries bounds a TOC's entries, chunk entries included (~232 bytes each decoded).
	MaxTOCEntries = 1 << 20
	// blobBytesPerTOCEntry: a TOC entry needs a tar header or a frame in the blob's data.
	blobBytesPerTOCEntry = 4
	// tarSplitBytesPerLine: a line needs at least one byte of the compressed tar-split.
	tarSplitBytesPerLine = 1
	// limitFloor keeps tiny layers (a handful of entries in a few hundred bytes) clear of the ratios.
	limitFloor = 4096
)

// TOCEntryLimit is how many TOC entries a layer may list whose data and metadata take carrier
// bytes of its blob (everything before the footer).
func TOCEntryLimit(carrier int64) int {
	return int(min(MaxTOCEntries, limitFloor+max(carrier, 0)/blobBytesPerTOCEntry))
}

// TarSplitLineLimit is how many lines a tar-split of compressed bytes may have.
func TarSplitLineLimit(compressed int64) int {
	return int(min(tarstream.MaxTarSplitLines, limitFloor+max(compressed, 0)/tarSplitBytesPerLine))
}

// errTooManyEntries is the error for metadata over an entry limit: hostile input.
func errTooManyEntries(what string, limit int) error {
	return fmt.Errorf("%s has more than %d entries for its size: %w", what, limit, errdefs.ErrInvalid)
}

// maxFrameExpansion is the most zstd can expand: a block yields at most 128 KiB and takes at
// least 4 bytes (a 3-byte header and the byte of an RLE block). A chunk, zeros chunks included,
// whose declared size its frames could not produce is refused before anything is written.
const maxFrameExpansion = (128 << 10) / 4

// checkExpansion refuses a file or chunk of size bytes whose frames r cannot hold that much.
func checkExpansion(name string, size int64, r source.Range) error {
	if size > 0 && (size-1)/maxFrameExpansion >= r.Length {
		return invalidf("file %q: %d bytes declared in %d bytes of frames (zstd expands at most %d times)",
			name, size, r.Length, maxFrameExpansion)
	}
	return nil
}
