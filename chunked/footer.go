package chunked

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/kura-oci/kura/errdefs"
)

// Skippable frames and footers.
const (
	skippableMagic      = 0x184D2A50
	skippableHeaderSize = 8
	footerSize          = 64 // current footer payload
	oldFooterSize       = 40 // containers/image ≤ 5.23 footer payload, no tar-split
	// FooterFetchSize is how many bytes at the end of a blob hold either footer form (with its
	// skippable frame header); LocateFromFooter wants them.
	FooterFetchSize = skippableHeaderSize + footerSize
)

var (
	footerMagic    = []byte("GNUlInUx")
	oldFooterMagic = []byte("GnUlInUx")
)

// footer is the decoded last skippable frame of a zstd:chunked blob.
type footer struct {
	tocOffset, tocLen, tocUncompressed                uint64
	tarSplitOffset, tarSplitLen, tarSplitUncompressed uint64
}

func (f footer) marshal() []byte {
	b := make([]byte, footerSize)
	for i, v := range []uint64{f.tocOffset, f.tocLen, f.tocUncompressed, manifestTypeCRFS,
		f.tarSplitOffset, f.tarSplitLen, f.tarSplitUncompressed} {
		binary.LittleEndian.PutUint64(b[8*i:], v)
	}
	copy(b[56:], footerMagic)
	return b
}

// parseFooter decodes the end of a blob (up to FooterFetchSize bytes): the 64-byte footer, or the
// old 40-byte one (old is then true and the tar-split fields are zero).
func parseFooter(tail []byte) (f footer, old bool, err error) {
	le := binary.LittleEndian
	frameOK := func(size int) bool {
		if len(tail) < skippableHeaderSize+size {
			return false
		}
		h := tail[len(tail)-size-skippableHeaderSize:]
		return le.Uint32(h) == skippableMagic && le.Uint32(h[4:]) == uint32(size)
	}
	switch {
	case len(tail) >= footerSize && bytes.Equal(tail[len(tail)-8:], footerMagic):
		if !frameOK(footerSize) {
			return f, false, fmt.Errorf("zstd:chunked footer is not a %d-byte skippable frame: %w", footerSize, errdefs.ErrInvalid)
		}
		b := tail[len(tail)-footerSize:]
		f = footer{
			tocOffset: le.Uint64(b), tocLen: le.Uint64(b[8:]), tocUncompressed: le.Uint64(b[16:]),
			tarSplitOffset: le.Uint64(b[32:]), tarSplitLen: le.Uint64(b[40:]), tarSplitUncompressed: le.Uint64(b[48:]),
		}
		if t := le.Uint64(b[24:]); t != manifestTypeCRFS {
			return f, false, fmt.Errorf("zstd:chunked footer: manifest type %d, want %d: %w", t, manifestTypeCRFS, errdefs.ErrUnsupported)
		}
		return f, false, nil
	case len(tail) >= oldFooterSize && bytes.Equal(tail[len(tail)-8:], oldFooterMagic):
		if !frameOK(oldFooterSize) {
			return f, false, fmt.Errorf("zstd:chunked footer is not a %d-byte skippable frame: %w", oldFooterSize, errdefs.ErrInvalid)
		}
		b := tail[len(tail)-oldFooterSize:]
		f = footer{tocOffset: le.Uint64(b), tocLen: le.Uint64(b[8:]), tocUncompressed: le.Uint64(b[16:])}
		if t := le.Uint64(b[24:]); t != manifestTypeCRFS {
			return f, false, fmt.Errorf("zstd:chunked footer: manifest type %d, want %d: %w", t, manifestTypeCRFS, errdefs.ErrUnsupported)
		}
		return f, true, nil
	}
	return f, false, fmt.Errorf("no zstd:chunked footer magic at the end of the blob: %w", errdefs.ErrInvalid)
}
