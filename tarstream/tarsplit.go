package tarstream

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// MaxTarSplitLines bounds a tar-split's lines, empty and whitespace lines included: a hostile
// stream of minimal lines would otherwise cost hundreds of bytes decoded per byte of input. A
// layer of chunked.MaxTOCEntries entries has about two lines per entry (header segment, file),
// so every layer the store records reads back.
const MaxTarSplitLines = 4 << 20

// DecodeTarSplit decodes a whole tar-split JSON stream (one storage.Entry per line, as tar-split's
// packer writes it), refusing more than maxLines lines, empty ones included (tar-split's own
// reader skips them, but each costs a decoder step): they are counted before anything is
// allocated for them. Lines in the packer's own shape take a fast path, about ten times quicker
// than encoding/json; any other line is decoded by encoding/json, so the result is what
// tar-split's unpacker gives, except that a line must hold exactly one JSON value and duplicate
// names are not rejected here (chunked.CheckTarSplit does that against the TOC). Segment payloads
// and CRCs share one allocation.
func DecodeTarSplit(b []byte, maxLines int) ([]storage.Entry, error) {
	lines := bytes.Count(b, []byte{'\n'})
	if len(b) > 0 && b[len(b)-1] != '\n' {
		lines++
	}
	if lines > maxLines {
		return nil, fmt.Errorf("tar-split has more than %d entries for its size: %w", maxLines, errdefs.ErrInvalid)
	}
	entries := make([]storage.Entry, 0, lines)
	slab := make([]byte, 0, base64.StdEncoding.DecodedLen(len(b)))
	for n := 1; len(b) > 0; n++ {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		e, ok := decodeEntry(line, &slab)
		if !ok {
			e = storage.Entry{}
			if err := json.Unmarshal(line, &e); err != nil {
				return nil, fmt.Errorf("tar-split line %d: %w: %v", n, errdefs.ErrInvalid, err)
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// decodeEntry decodes a line in the packer's shape (parseLine) into an entry whose payload is
// decoded into slab, which has room for it. It returns false for anything else, which then goes
// to encoding/json.
func decodeEntry(line []byte, slab *[]byte) (storage.Entry, bool) {
	l, ok := parseLine(line)
	if !ok {
		return storage.Entry{}, false
	}
	e := storage.Entry{Type: l.Type, Name: l.Name, Size: l.Size, Position: l.Position}
	if l.Payload != nil {
		start, size := len(*slab), base64.StdEncoding.DecodedLen(len(l.Payload))
		if cap(*slab)-start < size {
			return storage.Entry{}, false
		}
		dst := (*slab)[start : start+size]
		n, err := base64.StdEncoding.Decode(dst, l.Payload)
		if err != nil {
			return storage.Entry{}, false
		}
		*slab = (*slab)[:start+n]
		e.Payload = (*slab)[start : start+n : start+n]
	}
	return e, true
}
