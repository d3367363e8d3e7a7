package chunked

import (
	"archive/tar"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/kura-oci/kura/layerfs"
)

// HeaderEntry maps a tar header to the model's entry exactly as EntryFromHeader maps it to a TOC
// row (times clamped to the years a TOC can carry, zero times absent, xattrs from the
// SCHILY.xattr. PAX records), so that an entry built while walking a tar is the one decoding its
// TOC gives. Digest and Chunks are the caller's, once it has the content.
func HeaderEntry(hdr *tar.Header) (layerfs.Entry, error) {
	typ, err := tocType(hdr.Typeflag)
	if err != nil {
		return layerfs.Entry{}, fmt.Errorf("%q: %w", hdr.Name, err)
	}
	var xattrs map[string][]byte
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, PAXXattrPrefix); ok {
			if xattrs == nil {
				xattrs = map[string][]byte{}
			}
			xattrs[name] = []byte(v)
		}
	}
	return layerfs.Entry{
		Type: entryTypes[typ], Name: hdr.Name, Linkname: hdr.Linkname, Mode: hdr.Mode, Size: hdr.Size,
		UID: hdr.Uid, GID: hdr.Gid, ModTime: timeOrNil(hdr.ModTime), AccessTime: timeOrNil(hdr.AccessTime),
		ChangeTime: timeOrNil(hdr.ChangeTime), Devmajor: hdr.Devmajor, Devminor: hdr.Devminor, Xattrs: xattrs,
	}, nil
}

// EncodeTOC is the TOC that records entries without a blob (a store's tar import): the rows
// EntryFromHeader and ChunkEntries give with no frames, so no offsets, and a file of a single
// chunk without chunk fields (decoding it gives that chunk back: the whole file, not zeros).
// It is the one way from the model to the wire form; the rows are allocated at once.
func EncodeTOC(entries []layerfs.Entry) *TOC {
	n := len(entries)
	for i := range entries {
		if c := len(entries[i].Chunks); c > 1 {
			n += c - 1
		}
	}
	rows := make([]Entry, 0, n)
	for i := range entries {
		rows = appendRows(rows, &entries[i])
	}
	return &TOC{Version: 1, Entries: rows}
}

// appendRows appends the TOC rows of e: its own, then one per further chunk.
func appendRows(rows []Entry, e *layerfs.Entry) []Entry {
	r := Entry{
		Type: e.Type.String(), Name: e.Name, Linkname: e.Linkname, Mode: e.Mode, Size: e.Size,
		UID: e.UID, GID: e.GID, ModTime: e.ModTime, AccessTime: e.AccessTime, ChangeTime: e.ChangeTime,
		Devmajor: e.Devmajor, Devminor: e.Devminor, Digest: e.Digest.String(),
	}
	if len(e.Xattrs) > 0 {
		r.Xattrs = make(map[string]string, len(e.Xattrs))
		for k, v := range e.Xattrs {
			r.Xattrs[k] = base64.StdEncoding.EncodeToString(v)
		}
	}
	if len(e.Chunks) < 2 {
		return append(rows, r)
	}
	first := len(rows)
	rows = append(rows, r)
	for i, c := range e.Chunks {
		if i > 0 {
			rows = append(rows, Entry{Type: TypeChunk, Name: e.Name, ChunkOffset: c.Offset})
		}
		row := &rows[first+i]
		row.ChunkSize, row.ChunkDigest = c.Size, c.Digest.String()
		if c.Zeros {
			row.ChunkType = ChunkTypeZeros
		}
	}
	return rows
}
