package tarsplit

import (
	"fmt"
	"io"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// Known is a layer already in the store: its TOC and its uncompressed tar-split JSON stream.
type Known struct {
	TOC      *chunked.TOC
	TarSplit []byte
}

// record is one tar entry of a known layer as its tar-split stores it.
type record struct {
	entry *chunked.Entry // the layer's TOC entry for it
	name  string         // the name tar-split records (may differ from a lossy TOC name)
	// seg64 is the base64 text of the segment in front of the entry: the padding of the entry
	// before it (pad bytes), then extension headers and header. segs holds the decoded bytes
	// instead when tar-split recorded more than one segment there.
	seg64 []byte
	segs  []byte
	pad   int
	raw   []byte // the headers without the padding, decoded on first use
}

// header returns the entry's extension headers and header.
func (r *record) header() ([]byte, error) {
	if r.raw != nil {
		return r.raw, nil
	}
	seg := r.segs
	if seg == nil {
		b, err := (&line{payload: r.seg64}).decoded()
		if err != nil {
			return nil, fmt.Errorf("tar-split segment before %q: %w: %w", r.entry.Name, errdefs.ErrInvalid, err)
		}
		seg = b
	}
	if len(seg) < r.pad+512 || !allZero(seg[:r.pad]) {
		return nil, fmt.Errorf("tar-split entry %q is not preceded by padding and a header: %w", r.entry.Name, errdefs.ErrInvalid)
	}
	r.raw = seg[r.pad:]
	return r.raw, nil
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

// decodedLen is the length of the bytes base64 text of a multiple of 4 characters encodes.
func decodedLen(text []byte) int64 {
	n := int64(len(text) / 4 * 3)
	for i := len(text) - 1; i >= 0 && i >= len(text)-2 && text[i] == '='; i-- {
		n--
	}
	return n
}

// padding is the number of zero bytes tar puts after a payload of n bytes.
func padding(n int64) int64 { return (512 - n%512) % 512 }

// indexKnown splits a known tar-split into per-entry records and pairs them with the TOC's
// entries, which list the same tar entries in the same order (plus chunk entries). It adds the
// CRCs of the layer's content to crcs, by content digest.
func indexKnown(k Known, crcs map[string][]byte) (*layerIndex, error) {
	if k.TOC == nil {
		return nil, fmt.Errorf("known layer without a TOC: %w", errdefs.ErrInvalid)
	}
	tocEntries := make([]*chunked.Entry, 0, len(k.TOC.Entries))
	for i := range k.TOC.Entries {
		if k.TOC.Entries[i].Type != chunked.TypeChunk {
			tocEntries = append(tocEntries, &k.TOC.Entries[i])
		}
	}
	idx := &layerIndex{records: make([]record, 0, len(tocEntries))}
	var (
		segs     [][]byte // base64 texts of the segments since the last file entry
		segText  int
		prevSize int64 // payload size of the last file entry
	)
	up := newUnpacker(k.TarSplit)
	for {
		l, err := up.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar-split: %w: %w", errdefs.ErrInvalid, err)
		}
		switch l.typ {
		case storage.SegmentType:
			if len(l.payload) == 0 {
				return nil, fmt.Errorf("tar-split has an empty segment: %w", errdefs.ErrInvalid)
			}
			segs = append(segs, l.payload)
			segText += len(l.payload)
			idx.size += decodedLen(l.payload)
			if segText > maxHeaderBytes/3*4+8192 {
				return nil, fmt.Errorf("tar-split has more than %d bytes between entries: %w", maxHeaderBytes, errdefs.ErrInvalid)
			}
		case storage.FileType:
			i := len(idx.records)
			if i >= len(tocEntries) {
				return nil, fmt.Errorf("tar-split has more entries than the TOC's %d: %w", len(tocEntries), errdefs.ErrInvalid)
			}
			te := tocEntries[i]
			if len(segs) == 0 {
				return nil, fmt.Errorf("tar-split entry %q has no header: %w", te.Name, errdefs.ErrInvalid)
			}
			if l.size != te.Size || l.size < 0 {
				return nil, fmt.Errorf("tar-split says %q has %d bytes, the TOC %d: %w", te.Name, l.size, te.Size, errdefs.ErrInvalid)
			}
			r := record{entry: te, name: l.name}
			if i > 0 {
				r.pad = int(padding(prevSize))
			}
			if len(segs) == 1 {
				r.seg64 = segs[0]
			} else {
				for _, s := range segs {
					b, err := (&line{payload: s}).decoded()
					if err != nil {
						return nil, fmt.Errorf("tar-split segment before %q: %w: %w", te.Name, errdefs.ErrInvalid, err)
					}
					r.segs = append(r.segs, b...)
				}
			}
			idx.records = append(idx.records, r)
			segs, segText = segs[:0], 0
			prevSize = l.size
			idx.size += l.size
			if l.size > 0 && te.Type == chunked.TypeReg && te.Digest != "" {
				if sum, err := l.decoded(); err == nil && len(sum) == crcSize {
					crcs[te.Digest] = sum
				}
			}
		default:
			return nil, fmt.Errorf("tar-split entry type %d: %w", l.typ, errdefs.ErrInvalid)
		}
	}
	if len(idx.records) != len(tocEntries) {
		return nil, fmt.Errorf("tar-split has %d entries, the TOC %d: %w", len(idx.records), len(tocEntries), errdefs.ErrInvalid)
	}
	// The first segment after the last entry starts with its padding; the rest of that segment
	// is the end of the archive as the tar reader consumed it, later segments are the trailing
	// bytes in the reads tar-split happened to get.
	for i, s := range segs {
		b, err := (&line{payload: s}).decoded()
		if err != nil {
			return nil, fmt.Errorf("tar-split tail: %w: %w", errdefs.ErrInvalid, err)
		}
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
