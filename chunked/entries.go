package chunked

import (
	"encoding/base64"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/layerfs"
)

// entryTypes maps the TOC's type names to the model's.
var entryTypes = map[string]layerfs.Type{
	TypeReg: layerfs.TypeReg, TypeLink: layerfs.TypeLink, TypeSymlink: layerfs.TypeSymlink,
	TypeDir: layerfs.TypeDir, TypeChar: layerfs.TypeChar, TypeBlock: layerfs.TypeBlock,
	TypeFifo: layerfs.TypeFifo,
}

// DecodeEntries turns a TOC into the layer's entries: one per tar entry, digests parsed, xattrs
// decoded, the chunk rows of each file attached to it as Chunks, blob offsets left behind. It
// checks what the model promises (known types, digests, chunks that tile their file) but not
// names or frames, which Parse checks when the TOC enters the store and merges check again where
// names are used. Strings and times are shared with toc; the entries take one allocation, the
// chunks of all files another, xattr values are carved from a shared buffer (plus one map per
// entry that has xattrs): a large TOC, read on every checkout, mount and pull, costs little more
// than the rows themselves.
func DecodeEntries(toc *TOC) ([]layerfs.Entry, error) {
	rows := toc.Entries
	nEntries, nChunks := 0, 0
	for i := range rows {
		switch rows[i].Type {
		case TypeChunk:
			nChunks++
		case TypeReg:
			nEntries++
			nChunks++
		default:
			nEntries++
		}
	}
	d := entryDecoder{
		out:    make([]layerfs.Entry, 0, nEntries),
		chunks: make([]layerfs.Chunk, 0, nChunks),
	}
	for i := 0; i < len(rows); {
		next, err := d.entry(rows, i)
		if err != nil {
			return nil, fmt.Errorf("TOC entry %q: %w", rows[i].Name, err)
		}
		i = next
	}
	return d.out, nil
}

type entryDecoder struct {
	out    []layerfs.Entry
	chunks []layerfs.Chunk // backing array of every file's Chunks
	xattrs []byte          // backing array of xattr values, refilled when full
}

// entry decodes the entry at rows[i] (and its chunk rows) and returns the index after them.
func (d *entryDecoder) entry(rows []Entry, i int) (int, error) {
	r := &rows[i]
	t, ok := entryTypes[r.Type]
	if !ok {
		if r.Type == TypeChunk {
			return 0, fmt.Errorf("chunk without a preceding regular file: %w", errdefs.ErrInvalid)
		}
		return 0, fmt.Errorf("unknown type %q: %w", r.Type, errdefs.ErrInvalid)
	}
	d.out = append(d.out, layerfs.Entry{
		Type: t, Name: r.Name, Linkname: r.Linkname, Mode: r.Mode, UID: r.UID, GID: r.GID,
		ModTime: r.ModTime, AccessTime: r.AccessTime, ChangeTime: r.ChangeTime,
		Devmajor: r.Devmajor, Devminor: r.Devminor, Size: r.Size,
	})
	e := &d.out[len(d.out)-1]
	if err := d.decodeXattrs(e, r.Xattrs); err != nil {
		return 0, err
	}
	j := i + 1
	for j < len(rows) && rows[j].Type == TypeChunk {
		if rows[j].Name != r.Name {
			return 0, fmt.Errorf("chunk entry for %q follows it: %w", rows[j].Name, errdefs.ErrInvalid)
		}
		j++
	}
	if t != layerfs.TypeReg || r.Size == 0 {
		if j > i+1 {
			return 0, fmt.Errorf("chunks of an entry without content: %w", errdefs.ErrInvalid)
		}
		return j, nil
	}
	var err error
	if e.Digest, err = parseDigest(r.Digest); err != nil {
		return 0, err
	}
	return j, d.fileChunks(e, rows[i:j])
}

// fileChunks attaches to e the chunks its rows (the reg row, then its chunk rows) give.
func (d *entryDecoder) fileChunks(e *layerfs.Entry, rows []Entry) error {
	start := len(d.chunks)
	if len(rows) == 1 {
		c := layerfs.Chunk{Size: e.Size, Digest: e.Digest, Zeros: rows[0].ChunkType == ChunkTypeZeros}
		if rows[0].ChunkDigest != "" {
			var err error
			if c.Digest, err = parseDigest(rows[0].ChunkDigest); err != nil {
				return err
			}
		}
		d.chunks = append(d.chunks, c)
		e.Chunks = d.chunks[start:len(d.chunks):len(d.chunks)]
		return nil
	}
	var off int64
	for k := range rows {
		r := &rows[k]
		if r.ChunkOffset != off || r.ChunkSize <= 0 || r.ChunkSize > e.Size-off {
			return fmt.Errorf("chunk of %d bytes at %d: chunks must tile the %d-byte file: %w", r.ChunkSize, r.ChunkOffset, e.Size, errdefs.ErrInvalid)
		}
		if r.ChunkType != ChunkTypeData && r.ChunkType != ChunkTypeZeros {
			return fmt.Errorf("unknown chunk type %q: %w", r.ChunkType, errdefs.ErrInvalid)
		}
		cd, err := parseDigest(r.ChunkDigest)
		if err != nil {
			return err
		}
		d.chunks = append(d.chunks, layerfs.Chunk{Offset: off, Size: r.ChunkSize, Digest: cd, Zeros: r.ChunkType == ChunkTypeZeros})
		off += r.ChunkSize
	}
	if off != e.Size {
		return fmt.Errorf("chunks cover %d bytes, the file has %d: %w", off, e.Size, errdefs.ErrInvalid)
	}
	e.Chunks = d.chunks[start:len(d.chunks):len(d.chunks)]
	return nil
}

func parseDigest(s string) (digest.Digest, error) {
	d, err := digests.ParseSHA256(s)
	if err != nil {
		return "", fmt.Errorf("digest %q: %w", s, errdefs.ErrInvalid)
	}
	return d, nil
}

// decodeXattrs sets e.Xattrs from the TOC's base64 values, carving the values out of one
// shared buffer.
func (d *entryDecoder) decodeXattrs(e *layerfs.Entry, x map[string]string) error {
	if len(x) == 0 {
		return nil
	}
	e.Xattrs = make(map[string][]byte, len(x))
	for k, v := range x {
		n := base64.StdEncoding.DecodedLen(len(v))
		if cap(d.xattrs)-len(d.xattrs) < n {
			d.xattrs = make([]byte, 0, max(n, 16<<10))
		}
		buf := d.xattrs[len(d.xattrs) : len(d.xattrs)+n]
		m, err := base64.StdEncoding.Decode(buf, []byte(v))
		if err != nil {
			return fmt.Errorf("xattr %s: %v: %w", k, err, errdefs.ErrInvalid)
		}
		e.Xattrs[k] = buf[:m:m]
		d.xattrs = d.xattrs[:len(d.xattrs)+m]
	}
	return nil
}
