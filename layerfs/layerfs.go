// Package layerfs is the decoded, validated file tree of one layer: one Entry per tar entry,
// with real digests, decoded xattrs and each regular file's chunks attached to it. It is what
// the store, checkouts, mounts and merges work on, independent of the zstd:chunked JSON a layer
// is recorded in (package chunked decodes its TOC into this model, once per read), so that no
// consumer re-parses digests, decodes base64 or skips chunk continuation rows on its own.
package layerfs

import (
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
)

// Type is the type of an entry.
type Type uint8

// The entry types a layer can hold. The zero Type is none of them.
const (
	TypeReg Type = iota + 1
	TypeLink
	TypeSymlink
	TypeDir
	TypeChar
	TypeBlock
	TypeFifo
)

// typeNames are the names tar-derived formats (the zstd:chunked TOC among them) give the types;
// messages use them, so an error reads the same whichever form the entry came in.
var typeNames = [...]string{
	TypeReg: "reg", TypeLink: "hardlink", TypeSymlink: "symlink", TypeDir: "dir",
	TypeChar: "char", TypeBlock: "block", TypeFifo: "fifo",
}

// String returns the type's name ("reg", "hardlink", "dir", ...).
func (t Type) String() string {
	if int(t) < len(typeNames) && typeNames[t] != "" {
		return typeNames[t]
	}
	return "unknown"
}

// Entry is one tar entry of a layer.
type Entry struct {
	Type Type
	// Name is the entry's path as the layer names it (whiteouts included); Linkname is the
	// target of a symlink or hard link.
	Name     string
	Linkname string
	Mode     int64 // permission and set-id bits, as tar gives them
	UID, GID int
	// ModTime, AccessTime and ChangeTime are nil where the layer gives no time.
	ModTime, AccessTime, ChangeTime *time.Time
	Devmajor, Devminor              int64
	// Xattrs are the extended attributes, values decoded; nil when there are none.
	Xattrs map[string][]byte
	// Size is the content's length (regular files).
	Size int64
	// Digest is the digest of the content of a regular file with content; empty otherwise.
	Digest digest.Digest
	// Chunks of a regular file with content tile it, in order: at least one (a single chunk is
	// the whole file). Other entries have none.
	Chunks []Chunk
}

// Chunk is a run of a file's content that is addressed on its own.
type Chunk struct {
	Offset int64 // in the file
	Size   int64
	// Digest is the digest of the chunk's bytes (the file's digest for a single-chunk file).
	Digest digest.Digest
	// Zeros says the chunk is all zero bytes (a hole in a sparse file).
	Zeros bool
}

// HasContent reports whether e is a regular file with content (an object in a store).
func (e *Entry) HasContent() bool { return e.Type == TypeReg && e.Size > 0 }

// Objects lists the distinct content digests of entries, sorted: the objects a layer needs.
func Objects(entries []Entry) []digest.Digest {
	var out []digest.Digest
	for i := range entries {
		if e := &entries[i]; e.HasContent() {
			out = append(out, e.Digest)
		}
	}
	slices.Sort(out)
	return slices.Clip(slices.Compact(out))
}
