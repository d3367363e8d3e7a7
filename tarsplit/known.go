package tarsplit

import (
	"bytes"
	"fmt"
	"io"

	"github.com/opencontainers/go-digest"
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
	// raw is the entry's bytes before its payload: extension headers and header, without the
	// padding of the entry before it.
	raw []byte
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
// entries, which list the same tar entries in the same order (plus chunk entries).
func indexKnown(k Known, crcs map[digest.Digest][]byte) (*layerIndex, error) {
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
		segs     [][]byte // segments since the last file entry
		segBytes int
		prevSize int64 // payload size of the last file entry
	)
	up := newUnpacker(k.TarSplit)
	for {
		e, err := up.next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("reading tar-split: %w: %w", errdefs.ErrInvalid, err)
		}
		switch e.Type {
		case storage.SegmentType:
			segs = append(segs, e.Payload)
			segBytes += len(e.Payload)
			idx.size += int64(len(e.Payload))
		case storage.FileType:
			i := len(idx.records)
			if i >= len(tocEntries) {
				return nil, fmt.Errorf("tar-split has more entries than the TOC's %d: %w", len(tocEntries), errdefs.ErrInvalid)
			}
			te := tocEntries[i]
			if segBytes > maxHeaderBytes {
				return nil, fmt.Errorf("tar-split has %d bytes before %q: %w", segBytes, te.Name, errdefs.ErrInvalid)
			}
			pad := 0
			if i > 0 {
				pad = int(padding(prevSize))
			}
			raw := bytes.Join(segs, nil)
			if len(raw) < pad+512 || !allZero(raw[:pad]) {
				return nil, fmt.Errorf("tar-split entry %q is not preceded by padding and a header: %w", te.Name, errdefs.ErrInvalid)
			}
			if e.Size != te.Size || e.Size < 0 {
				return nil, fmt.Errorf("tar-split says %q has %d bytes, the TOC %d: %w", te.Name, e.Size, te.Size, errdefs.ErrInvalid)
			}
			idx.records = append(idx.records, record{entry: te, name: e.GetName(), raw: raw[pad:]})
			segs, segBytes = segs[:0], 0
			prevSize = e.Size
			idx.size += e.Size
			if e.Size > 0 && te.Type == chunked.TypeReg && len(e.Payload) == crcSize {
				if d, err := digest.Parse(te.Digest); err == nil {
					crcs[d] = e.Payload
				}
			}
		default:
			return nil, fmt.Errorf("tar-split entry type %d: %w", e.Type, errdefs.ErrInvalid)
		}
	}
	if len(idx.records) != len(tocEntries) {
		return nil, fmt.Errorf("tar-split has %d entries, the TOC %d: %w", len(idx.records), len(tocEntries), errdefs.ErrInvalid)
	}
	// The first segment after the last entry starts with its padding; the rest of that segment
	// is the end of the archive as the tar reader consumed it, later segments are the trailing
	// bytes in the reads tar-split happened to get.
	if len(segs) > 0 {
		pad := 0
		if len(idx.records) > 0 {
			pad = int(padding(prevSize))
		}
		if len(segs[0]) < pad || !allZero(segs[0][:pad]) {
			return nil, fmt.Errorf("tar-split: the last entry's padding is missing: %w", errdefs.ErrInvalid)
		}
		idx.eof = segs[0][pad:]
		idx.rest = segs[1:]
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

// unpacker reads tar-split JSON lines. storage's unpacker decodes with encoding/json, which is
// most of the cost of a prediction; lines as storage's packer writes them are decoded here
// directly, anything else falls back to encoding/json.
type unpacker struct {
	rest []byte
	line int
}

func newUnpacker(b []byte) *unpacker { return &unpacker{rest: b} }

func (u *unpacker) next() (*storage.Entry, error) {
	for len(u.rest) > 0 && (u.rest[0] == '\n' || u.rest[0] == ' ' || u.rest[0] == '\t' || u.rest[0] == '\r') {
		u.rest = u.rest[1:]
	}
	if len(u.rest) == 0 {
		return nil, io.EOF
	}
	line := u.rest
	if i := bytes.IndexByte(line, '\n'); i >= 0 {
		line, u.rest = line[:i], line[i+1:]
	} else {
		u.rest = nil
	}
	u.line++
	e, err := decodeLine(line)
	if err != nil {
		return nil, fmt.Errorf("line %d: %w", u.line, err)
	}
	return e, nil
}
