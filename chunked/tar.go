package chunked

import (
	"archive/tar"
	"encoding/base64"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// PAXXattrPrefix marks extended attributes among PAX records.
const PAXXattrPrefix = "SCHILY.xattr."

// tocType maps a tar type flag to the TOC entry type.
func tocType(flag byte) (string, error) {
	switch flag {
	case tar.TypeReg:
		return TypeReg, nil
	case tar.TypeLink:
		return TypeLink, nil
	case tar.TypeChar:
		return TypeChar, nil
	case tar.TypeBlock:
		return TypeBlock, nil
	case tar.TypeDir:
		return TypeDir, nil
	case tar.TypeFifo:
		return TypeFifo, nil
	case tar.TypeSymlink:
		return TypeSymlink, nil
	}
	return "", fmt.Errorf("tar entry type %q: %w", flag, errdefs.ErrUnsupported)
}

// EntryFromHeader maps a tar header to a TOC entry's metadata fields exactly as the reference
// writer does. Digest, offsets and chunk fields are left empty.
func EntryFromHeader(hdr *tar.Header) (Entry, error) {
	typ, err := tocType(hdr.Typeflag)
	if err != nil {
		return Entry{}, fmt.Errorf("%q: %w", hdr.Name, err)
	}
	var xattrs map[string]string
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, PAXXattrPrefix); ok {
			if xattrs == nil {
				xattrs = map[string]string{}
			}
			xattrs[name] = base64.StdEncoding.EncodeToString([]byte(v))
		}
	}
	return Entry{
		Type:       typ,
		Name:       hdr.Name,
		Linkname:   hdr.Linkname,
		Mode:       hdr.Mode,
		Size:       hdr.Size,
		UID:        hdr.Uid,
		GID:        hdr.Gid,
		ModTime:    timeOrNil(hdr.ModTime),
		AccessTime: timeOrNil(hdr.AccessTime),
		ChangeTime: timeOrNil(hdr.ChangeTime),
		Devmajor:   hdr.Devmajor,
		Devminor:   hdr.Devminor,
		Xattrs:     xattrs,
	}, nil
}

// ChunkEntries returns the TOC entries of a regular file laid out as the reference does: base
// (from EntryFromHeader) with Digest set, then, if the file has more than one chunk, chunk fields
// on base for chunk 0 and one TypeChunk entry per further chunk. frames, if not nil, holds the
// compressed offset of each chunk's zstd frame followed by the file's end offset
// (len(chunks)+1 values); without a blob (e.g. in a store) pass nil and offsets stay zero.
func ChunkEntries(base Entry, fileDigest digest.Digest, chunks []Chunk, frames []int64) []Entry {
	base.Digest = fileDigest.String()
	if frames != nil && len(frames) == len(chunks)+1 && len(chunks) > 0 {
		base.Offset = frames[0]
		base.EndOffset = frames[len(chunks)]
	}
	entries := []Entry{base}
	if len(chunks) < 2 {
		return entries
	}
	for i, c := range chunks {
		if i > 0 {
			entries = append(entries, Entry{Type: TypeChunk, Name: base.Name, ChunkOffset: c.Offset})
		}
		e := &entries[i]
		e.ChunkSize = c.Size
		e.ChunkDigest = c.Digest.String()
		if c.Zeros {
			e.ChunkType = ChunkTypeZeros
		}
		if frames != nil && len(frames) == len(chunks)+1 {
			e.Offset = frames[i]
		}
	}
	return entries
}
