package tarsplit

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"slices"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/tarstream"
)

// Known is a layer already in the store: its entries (store.LayerEntries) and its uncompressed
// tar-split JSON stream, whole in TarSplit or to be read from Stream.
type Known struct {
	Entries  []layerfs.Entry
	TarSplit []byte
	// Stream, when set, is read instead of TarSplit, once, and the segments a prediction keeps
	// are copied out of it: the known tar-split is never held whole (it is several times the
	// size of the headers a prediction reuses), and nothing keeps its text alive afterwards.
	// PredictJSON, which reuses the text, wants TarSplit.
	Stream io.Reader
}

// segmentDecoder decodes a known tar-split's base64 segments into memory that outlives the
// text: one fixed buffer, the text itself (in place), or, for a stream, blocks allocated as
// needed. Decoded segments are never moved, so slices of them stay valid.
type segmentDecoder struct {
	inPlace bool
	stream  bool
	slab    []byte
	scratch []byte
}

// segmentBlock is the size of the blocks a streamed tar-split's segments are decoded into.
const segmentBlock = 256 << 10

func newSegmentDecoder(k Known, inPlace bool) *segmentDecoder {
	d := &segmentDecoder{inPlace: inPlace && k.Stream == nil, stream: k.Stream != nil}
	if !d.inPlace && !d.stream {
		d.slab = make([]byte, 0, len(k.TarSplit)/4*3)
	}
	return d
}

// keepsText says whether the decoded segments leave the base64 text as it was, to be reused.
func (d *segmentDecoder) keepsText() bool { return !d.inPlace && !d.stream }

// decode decodes one segment's base64 text.
func (d *segmentDecoder) decode(text []byte) ([]byte, error) {
	n := base64.StdEncoding.DecodedLen(len(text))
	d.scratch = slices.Grow(d.scratch[:0], n)[:n]
	n, err := base64.StdEncoding.Decode(d.scratch, text)
	if err != nil {
		return nil, err
	}
	if d.inPlace {
		return text[:copy(text, d.scratch[:n])], nil // n < len(text): the text is consumed
	}
	if len(d.slab)+n > cap(d.slab) {
		if !d.stream {
			return nil, fmt.Errorf("segments decode to more than their text allows")
		}
		d.slab = make([]byte, 0, max(n, segmentBlock))
	}
	d.slab = append(d.slab, d.scratch[:n]...)
	return d.slab[len(d.slab)-n:], nil
}

// record is one tar entry of a known layer as its tar-split stores it.
type record struct {
	entry *layerfs.Entry // the layer's entry for it
	name  string         // the name tar-split records (may differ from a lossy TOC name)
	// seg is the segment in front of the entry, decoded: the padding of the entry before it
	// (pad bytes), then extension headers and header. single says tar-split recorded it as one
	// segment, as the predicted stream will; seg64 is then its base64 text, unless the text was
	// decoded in place.
	seg    []byte
	seg64  []byte
	single bool
	pad    int
}

// header returns the entry's extension headers and header.
func (r *record) header() ([]byte, error) {
	if len(r.seg) < r.pad+512 || !allZero(r.seg[:r.pad]) {
		return nil, fmt.Errorf("tar-split entry %q is not preceded by padding and a header: %w", r.entry.Name, errdefs.ErrInvalid)
	}
	return r.seg[r.pad:], nil
}

// layerIndex is what one known layer teaches about the layer to predict.
type layerIndex struct {
	records []record
	// eof is what the tar reader consumed after the last entry's padding (end-of-archive blocks).
	eof []byte
	// rest are the segments tar-split recorded after that, each as one read returned it.
	rest [][]byte
	// size is the length of the whole tar stream.
	size int64
}

// maxHeaderBytes bounds the raw bytes in front of one entry. PAX records (xattrs, long names)
// can be large, but a megabyte of them means a hostile or broken stream.
const maxHeaderBytes = 1 << 20

// padding is the number of zero bytes tar puts after a payload of n bytes.
func padding(n int64) int64 { return (512 - n%512) % 512 }

// indexKnown splits a known tar-split into per-entry records and pairs them with the TOC's
// entries, which list the same tar entries in the same order (plus chunk entries). It adds the
// CRCs of the layer's content to crcs, by content digest. Segments are decoded into one new
// buffer, or with inPlace into the tar-split's own memory, whose JSON is then lost, or, from a
// Stream, into blocks of their own (segmentDecoder).
func indexKnown(k Known, crcs map[digest.Digest][]byte, inPlace bool) (*layerIndex, error) {
	if k.Entries == nil {
		return nil, fmt.Errorf("known layer without entries (no TOC): %w", errdefs.ErrInvalid)
	}
	tocEntries := k.Entries
	idx := &layerIndex{records: make([]record, 0, len(tocEntries))}
	dec := newSegmentDecoder(k, inPlace)
	var (
		segs     [][]byte // decoded segments since the last file entry
		seg64    []byte   // the text of the first of them
		segText  int
		prevSize int64 // payload size of the last file entry
	)
	up := tarstream.NewLineReader(k.TarSplit, tarstream.MaxTarSplitLines)
	if k.Stream != nil {
		up = tarstream.NewLineReaderFrom(k.Stream, tarstream.MaxTarSplitLines)
	}
	for {
		l, err := up.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar-split: %w: %w", errdefs.ErrInvalid, err)
		}
		switch l.Type {
		case storage.SegmentType:
			if len(l.Payload) == 0 {
				return nil, fmt.Errorf("tar-split has an empty segment: %w", errdefs.ErrInvalid)
			}
			segText += len(l.Payload)
			if segText > maxHeaderBytes/3*4+8192 {
				return nil, fmt.Errorf("tar-split has more than %d bytes between entries: %w", maxHeaderBytes, errdefs.ErrInvalid)
			}
			if len(segs) == 0 && dec.keepsText() {
				seg64 = l.Payload
			}
			b, err := dec.decode(l.Payload)
			if err != nil {
				return nil, fmt.Errorf("tar-split segment: %w: %w", errdefs.ErrInvalid, err)
			}
			segs = append(segs, b)
			idx.size += int64(len(b))
		case storage.FileType:
			i := len(idx.records)
			if i >= len(tocEntries) {
				return nil, fmt.Errorf("tar-split has more entries than the TOC's %d: %w", len(tocEntries), errdefs.ErrInvalid)
			}
			te := &tocEntries[i]
			if len(segs) == 0 {
				return nil, fmt.Errorf("tar-split entry %q has no header: %w", te.Name, errdefs.ErrInvalid)
			}
			if l.Size != te.Size || l.Size < 0 {
				return nil, fmt.Errorf("tar-split says %q has %d bytes, the TOC %d: %w", te.Name, l.Size, te.Size, errdefs.ErrInvalid)
			}
			r := record{entry: te, name: l.Name, single: len(segs) == 1}
			if i > 0 {
				r.pad = int(padding(prevSize))
			}
			if r.single {
				r.seg, r.seg64 = segs[0], seg64
			} else {
				r.seg = bytes.Join(segs, nil)
			}
			idx.records = append(idx.records, r)
			segs, seg64, segText = segs[:0], nil, 0
			prevSize = l.Size
			idx.size += l.Size
			if l.Size > 0 && te.Type == layerfs.TypeReg && te.Digest != "" {
				if sum, err := l.DecodedPayload(); err == nil && len(sum) == crcSize {
					crcs[te.Digest] = sum
				}
			}
		default:
			return nil, fmt.Errorf("tar-split entry type %d: %w", l.Type, errdefs.ErrInvalid)
		}
	}
	if len(idx.records) != len(tocEntries) {
		return nil, fmt.Errorf("tar-split has %d entries, the TOC %d: %w", len(idx.records), len(tocEntries), errdefs.ErrInvalid)
	}
	// The first segment after the last entry starts with its padding; the rest of that segment
	// is the end of the archive as the tar reader consumed it, later segments are the trailing
	// bytes in the reads tar-split happened to get.
	for i, b := range segs {
		if i == 0 {
			pad := 0
			if len(idx.records) > 0 {
				pad = int(padding(prevSize))
			}
			if len(b) < pad || !allZero(b[:pad]) {
				return nil, fmt.Errorf("tar-split: the last entry's padding is missing: %w", errdefs.ErrInvalid)
			}
			idx.eof = b[pad:]
		} else {
			idx.rest = append(idx.rest, b)
		}
	}
	return idx, nil
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}
