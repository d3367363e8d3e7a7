package chunked

import (
	"bytes"
	"io"
	"math/bits"
)

// A zstd frame declares the window its decoder must keep, and a streaming decoder allocates that
// much history before the first block: writers of this format declare 8 MiB for every frame they
// stream, so each file over a few hundred bytes made a pull's decoder hold 8 MiB, whatever the
// file's size. A frame without a dictionary refers back only to what it has itself produced, so
// no decoder ever needs more window than the frame's content; the TOC gives that size, and the
// window descriptor of the first frame is lowered to it before decoding. A frame that does need
// more is corrupt and fails to decode (then the content fails its digest), as it would anyway.

// zstdMagic starts every zstd frame.
var zstdMagic = []byte{0x28, 0xb5, 0x2f, 0xfd}

// frameHeaderPeek is what shrinkWindow reads: magic, frame header descriptor, window descriptor.
const frameHeaderPeek = 6

// boundedWindow returns r with the first frame's declared window lowered to the smallest that
// holds size bytes (at least 1 KiB), if it declares more.
func boundedWindow(r io.Reader, size int64) io.Reader {
	hdr := make([]byte, frameHeaderPeek)
	n, err := io.ReadFull(r, hdr)
	if err != nil {
		return io.MultiReader(bytes.NewReader(hdr[:n]), errReader{err})
	}
	shrinkWindow(hdr, size)
	return io.MultiReader(bytes.NewReader(hdr), r)
}

// errReader returns err after the bytes before it; io.ErrUnexpectedEOF and io.EOF are the
// end of the stream, which the decoder reports in its own words.
type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) {
	if e.err == io.ErrUnexpectedEOF {
		return 0, io.EOF
	}
	return 0, e.err
}

// shrinkWindow rewrites, in a frame header's first bytes, a window descriptor larger than size
// needs. Single-segment frames (whose window is their content size), dictionaries and anything
// that is not a zstd frame are left alone.
func shrinkWindow(hdr []byte, size int64) {
	if len(hdr) < frameHeaderPeek || !bytes.Equal(hdr[:4], zstdMagic) {
		return
	}
	fhd := hdr[4]
	if fhd&0x20 != 0 || fhd&0x03 != 0 { // single segment: no window descriptor; dictionary ID
		return
	}
	exp, mant := uint64(hdr[5]>>3), uint64(hdr[5]&7)
	base := uint64(1) << (10 + exp)
	declared := base + base/8*mant
	// The smallest power of two ≥ size, at least 1 KiB (exponent 0).
	need := uint(bits.Len64(uint64(max(size, 1024)) - 1))
	if want := uint64(1) << need; want < declared {
		hdr[5] = byte(need-10) << 3
	}
}
