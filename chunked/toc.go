// Package chunked reads and writes zstd:chunked layers, the containers/storage format in which every
// regular file is its own run of zstd frames and a table of contents (TOC) plus tar-split data sit in
// skippable frames at the end of an ordinary tar+zstd blob.
//
// Writing: Convert (writer.go) turns a tar stream into a blob byte-identical to the reference
// writer's, compressing frames in parallel. The pieces it is built from serve the store too:
// ChunkWriter cuts file content like the reference (chunker.go); EntryFromHeader and ChunkEntries
// map tar headers to TOC entries (tar.go). A store's tar import builds the model instead
// (HeaderEntry) and derives its TOC from it (EncodeTOC, model.go). Walking a tar, the tar-split
// codec and rebuilding the tar are package tarstream's.
//
// Reading: LocateFromAnnotations / LocateFromFooter say which byte ranges hold the metadata, Parse
// authenticates and validates them into a Layer (reader.go): the TOC decoded once into the model
// (Layer.Entries, package layerfs) and, beside it, where each file's frames lie (Layer.Files).
// DecodeFrames / ReadFile / ReadChunk decode verified content, Layer.RebuildTar gives the DiffID,
// and Verify checks a whole blob (verify.go). The TOC struct is the wire form: parsed, marshalled
// and stored, not worked on.
package chunked

import (
	"encoding/json"
	"slices"
	"time"

	"github.com/kura-oci/kura/layername"
)

// Entry types of a TOC.
const (
	TypeReg        = "reg"
	TypeChunk      = "chunk"
	TypeLink       = "hardlink"
	TypeChar       = "char"
	TypeBlock      = "block"
	TypeDir        = "dir"
	TypeFifo       = "fifo"
	TypeSymlink    = "symlink"
	ChunkTypeData  = ""
	ChunkTypeZeros = "zeros"
)

// TOC is the table of contents of a zstd:chunked layer (the "manifest" in containers/storage).
type TOC struct {
	Version int     `json:"version"`
	Entries []Entry `json:"entries"`
	// TarSplitDigest is the sha256 of the compressed tar-split bytes; empty in the old format.
	TarSplitDigest string `json:"tarSplitDigest,omitempty"`
}

// Entry is one TOC record: a tar entry, or (Type == TypeChunk) a further chunk of the preceding
// regular file. The field order and JSON names match containers/storage so that the encoded TOC
// is byte-identical to the reference writer's.
type Entry struct {
	Type        string            `json:"type"`
	Name        string            `json:"name"`
	Linkname    string            `json:"linkName,omitempty"`
	Mode        int64             `json:"mode,omitempty"`
	Size        int64             `json:"size,omitempty"`
	UID         int               `json:"uid,omitempty"`
	GID         int               `json:"gid,omitempty"`
	ModTime     *time.Time        `json:"modtime,omitempty"`
	AccessTime  *time.Time        `json:"accesstime,omitempty"`
	ChangeTime  *time.Time        `json:"changetime,omitempty"`
	Devmajor    int64             `json:"devMajor,omitempty"`
	Devminor    int64             `json:"devMinor,omitempty"`
	Xattrs      map[string]string `json:"xattrs,omitempty"` // values are base64
	Digest      string            `json:"digest,omitempty"`
	Offset      int64             `json:"offset,omitempty"`
	EndOffset   int64             `json:"endOffset,omitempty"`
	ChunkSize   int64             `json:"chunkSize,omitempty"`
	ChunkOffset int64             `json:"chunkOffset,omitempty"`
	ChunkDigest string            `json:"chunkDigest,omitempty"`
	ChunkType   string            `json:"chunkType,omitempty"`
	// NameRaw and LinknameRaw carry Name and Linkname exactly where they are not UTF-8, which
	// a JSON string cannot hold (Name then reads U+FFFD for each bad byte, as the reference
	// writes it). A store's TOCs use them (MarshalTOC); ParseTOC puts them back into Name and
	// Linkname and clears them.
	NameRaw     []byte `json:"kura.nameRaw,omitempty"`
	LinknameRaw []byte `json:"kura.linkNameRaw,omitempty"`
}

// Annotation keys on a zstd:chunked layer descriptor. The current names (io.github.containers.*) are
// what containers/storage reads today; the old names (io.containers.*) are the only ones podman 4.x
// (containers/storage ≤ 1.45) recognises, so the writer emits both sets.
const (
	AnnotationTOCDigest        = "io.github.containers.zstd-chunked.manifest-checksum"
	AnnotationTOCPosition      = "io.github.containers.zstd-chunked.manifest-position"
	AnnotationTarSplitPosition = "io.github.containers.zstd-chunked.tarsplit-position"
	AnnotationOldTOCDigest     = "io.containers.zstd-chunked.manifest-checksum"
	AnnotationOldTOCPosition   = "io.containers.zstd-chunked.manifest-position"
	// AnnotationEstargzTOC marks an eStargz layer; a layer carrying it and ours is refused.
	AnnotationEstargzTOC = "containerd.io/snapshot/stargz/toc.digest"
)

// MediaTypeLayer is the OCI media type of a zstd:chunked layer: an ordinary tar+zstd blob.
const MediaTypeLayer = "application/vnd.oci.image.layer.v1.tar+zstd"

// manifestTypeCRFS is the only TOC type: the CRFS-like JSON TOC.
const manifestTypeCRFS = 1

// timeOrNil leaves zero times out of the TOC, as the reference does.
func timeOrNil(t time.Time) *time.Time {
	if t.IsZero() {
		return nil
	}
	t = ClampTime(t)
	return &t
}

// The times a TOC can carry: JSON times are RFC 3339, years 0000 to 9999.
var (
	minTOCTime = time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC)
	maxTOCTime = time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)
)

// ClampTime brings t into the years a TOC can carry (0000–9999). A tar can date a file later
// (or earlier); its tar-split keeps the exact header, so only the TOC, and what is made from
// it (checkouts, mounts), sees the clamped time.
func ClampTime(t time.Time) time.Time {
	switch {
	case t.Before(minTOCTime):
		return minTOCTime
	case t.After(maxTOCTime):
		return maxTOCTime
	}
	return t
}

// MarshalTOC encodes a TOC as a store keeps it: the zstd:chunked JSON, plus NameRaw and
// LinknameRaw for names that are not UTF-8, so that no name changes on the way. An xattr name
// that is not UTF-8 has no such field: the TOC is refused (layername.ErrTOCInexact).
func MarshalTOC(toc *TOC) ([]byte, error) {
	out := *toc
	copied := false
	for i := range toc.Entries {
		e := &toc.Entries[i]
		if layername.InTOC(e.Name) && layername.InTOC(e.Linkname) {
			continue
		}
		if !copied {
			out.Entries, copied = slices.Clone(toc.Entries), true
		}
		c := &out.Entries[i]
		if !layername.InTOC(e.Name) {
			c.NameRaw = []byte(e.Name)
		}
		if !layername.InTOC(e.Linkname) {
			c.LinknameRaw = []byte(e.Linkname)
		}
	}
	for i := range toc.Entries {
		for k := range toc.Entries[i].Xattrs {
			if err := layername.CheckTOC(toc.Entries[i].Name, k); err != nil {
				return nil, err
			}
		}
	}
	return json.Marshal(&out)
}

// restoreRaw puts NameRaw and LinknameRaw back into Name and Linkname. Each must be what the
// JSON name stands for (not UTF-8, and the same once each bad byte reads U+FFFD); anything else
// is a TOC that says two things.
func (e *Entry) restoreRaw() error {
	for _, f := range []struct {
		raw  *[]byte
		name *string
	}{{&e.NameRaw, &e.Name}, {&e.LinknameRaw, &e.Linkname}} {
		if *f.raw == nil {
			continue
		}
		raw := string(*f.raw)
		if layername.InTOC(raw) || string([]rune(raw)) != *f.name {
			return invalidf("TOC entry %q: kura.nameRaw/linkNameRaw does not stand for the name", e.Name)
		}
		*f.name, *f.raw = raw, nil
	}
	return nil
}
