// Package chunked reads and writes zstd:chunked layers, the containers/storage format in which every
// regular file is its own run of zstd frames and a table of contents (TOC) plus tar-split data sit in
// skippable frames at the end of an ordinary tar+zstd blob.
//
// Writing: Convert (writer.go) turns a tar stream into a blob byte-identical to the reference
// writer's, compressing frames in parallel. The pieces it is built from serve the store too:
// ChunkWriter cuts file content like the reference (chunker.go); EntryFromHeader, WalkTar,
// ChunkEntries and RebuildTar map tar to TOC entries and tar-split and back (tar.go).
//
// Reading: LocateFromAnnotations / LocateFromFooter say which byte ranges hold the metadata, Parse
// authenticates and validates them into a Layer (reader.go), DecodeFrames / ReadFile / ReadChunk
// decode verified content, Layer.RebuildTar gives the DiffID, and Verify checks a whole blob
// (verify.go).
package chunked

import "time"

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
	return &t
}
