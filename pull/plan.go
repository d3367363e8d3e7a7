package pull

import (
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// PieceKind says where the bytes of one piece of a file come from.
type PieceKind int

const (
	// PieceRemote is fetched from the blob: compressed frames [Offset, End).
	PieceRemote PieceKind = iota
	// PieceLocal is copied from an object already in the store (re-hashed before use).
	PieceLocal
	// PieceZeros is a run of zero bytes; it becomes a hole and is never fetched.
	PieceZeros
)

// Piece is one chunk of a file to assemble.
type Piece struct {
	Kind       PieceKind
	FileOffset int64         // where the piece starts in the uncompressed file
	Size       int64         // uncompressed size
	Digest     digest.Digest // sha256 of the uncompressed piece
	Offset     int64         // PieceRemote: compressed start in the blob
	End        int64         // PieceRemote: compressed end in the blob
	Local      ChunkLocation // PieceLocal: where the same bytes are stored
}

// ChunkLocation names bytes inside an object of the store.
type ChunkLocation struct {
	Object digest.Digest
	Offset int64
}

// FilePlan is how to assemble one object that the store lacks.
type FilePlan struct {
	Name   string // first TOC name with this content, for messages
	Digest digest.Digest
	Size   int64
	Pieces []Piece // in file order, tiling [0, Size)
}

// Have answers what the local store already holds.
type Have interface {
	HasObject(d digest.Digest) bool
	// FindChunk returns where a chunk with this digest and size is stored, if anywhere.
	FindChunk(d digest.Digest, size int64) (ChunkLocation, bool)
}

// Plan says, for one zstd:chunked layer, which contents are reused and which are fetched.
type Plan struct {
	Files        []FilePlan // objects to assemble, in blob order
	ReusedFiles  int        // distinct contents found whole in the store
	ReusedChunks int        // chunks found in other objects of the store
	ZeroChunks   int
	// Compressed blob bytes of file data that need not be fetched (reused, holes, duplicates).
	SkippedBytes int64
	// Compressed blob bytes of file data that must be fetched.
	FetchBytes int64
}

// Ranges returns the compressed byte ranges to fetch, in blob order.
func (p *Plan) Ranges() []Range {
	var rs []Range
	for _, f := range p.Files {
		for _, pc := range f.Pieces {
			if pc.Kind == PieceRemote {
				rs = append(rs, Range{Offset: pc.Offset, Length: pc.End - pc.Offset})
			}
		}
	}
	return rs
}

// Range is a compressed byte range of a blob.
type Range struct {
	Offset, Length int64
}

// fileChunks groups the TOC entries of each regular file (its reg entry and following chunk entries).
type fileChunks struct {
	reg    *chunked.Entry
	chunks []*chunked.Entry // chunk entries after the reg entry; empty for single-chunk files
}

// MakePlan decides how to obtain every regular file of a validated TOC. blobSize bounds offsets.
func MakePlan(toc *chunked.TOC, blobSize int64, have Have) (*Plan, error) {
	files, err := groupFiles(toc)
	if err != nil {
		return nil, err
	}
	p := &Plan{}
	planned := map[digest.Digest]bool{}
	for _, f := range files {
		if f.reg.Size == 0 {
			continue
		}
		compressed := f.reg.EndOffset - f.reg.Offset
		if f.reg.Offset < 0 || f.reg.EndOffset > blobSize || compressed <= 0 {
			return nil, fmt.Errorf("file %q: frames [%d, %d) outside the blob of %d bytes: %w",
				f.reg.Name, f.reg.Offset, f.reg.EndOffset, blobSize, errdefs.ErrInvalid)
		}
		d, err := digest.Parse(f.reg.Digest)
		if err != nil {
			return nil, fmt.Errorf("file %q: digest %q: %w", f.reg.Name, f.reg.Digest, errdefs.ErrInvalid)
		}
		if planned[d] || have.HasObject(d) {
			if !planned[d] {
				p.ReusedFiles++
			}
			p.SkippedBytes += compressed
			continue
		}
		planned[d] = true
		fp := FilePlan{Name: f.reg.Name, Digest: d, Size: f.reg.Size}
		if len(f.chunks) == 0 {
			fp.Pieces = []Piece{{Kind: PieceRemote, Size: f.reg.Size, Digest: d, Offset: f.reg.Offset, End: f.reg.EndOffset}}
			p.FetchBytes += compressed
			p.Files = append(p.Files, fp)
			continue
		}
		pieces, err := chunkPieces(f)
		if err != nil {
			return nil, err
		}
		for i := range pieces {
			pc := &pieces[i]
			n := pc.End - pc.Offset
			switch {
			case pc.Kind == PieceZeros:
				p.ZeroChunks++
				p.SkippedBytes += n
			default:
				if loc, ok := have.FindChunk(pc.Digest, pc.Size); ok {
					pc.Kind, pc.Local = PieceLocal, loc
					p.ReusedChunks++
					p.SkippedBytes += n
				} else {
					p.FetchBytes += n
				}
			}
		}
		fp.Pieces = pieces
		p.Files = append(p.Files, fp)
	}
	return p, nil
}

// chunkPieces turns a multi-chunk file's entries into pieces, checking that they tile the file and its frames.
func chunkPieces(f fileChunks) ([]Piece, error) {
	all := append([]*chunked.Entry{f.reg}, f.chunks...)
	pieces := make([]Piece, 0, len(all))
	var fileOff int64
	for i, c := range all {
		chunkOff := c.ChunkOffset
		if i == 0 {
			chunkOff = 0
		}
		end := f.reg.EndOffset
		if i+1 < len(all) {
			end = all[i+1].Offset
		}
		if chunkOff != fileOff || c.ChunkSize <= 0 || c.Offset < f.reg.Offset || end > f.reg.EndOffset || end <= c.Offset {
			return nil, fmt.Errorf("file %q: chunk %d (offset %d, size %d, frames [%d, %d)) does not tile the file: %w",
				f.reg.Name, i, chunkOff, c.ChunkSize, c.Offset, end, errdefs.ErrInvalid)
		}
		d, err := digest.Parse(c.ChunkDigest)
		if err != nil {
			return nil, fmt.Errorf("file %q: chunk %d digest %q: %w", f.reg.Name, i, c.ChunkDigest, errdefs.ErrInvalid)
		}
		kind := PieceRemote
		if c.ChunkType == chunked.ChunkTypeZeros {
			kind = PieceZeros
		}
		pieces = append(pieces, Piece{Kind: kind, FileOffset: chunkOff, Size: c.ChunkSize, Digest: d, Offset: c.Offset, End: end})
		fileOff += c.ChunkSize
	}
	if fileOff != f.reg.Size {
		return nil, fmt.Errorf("file %q: chunks cover %d bytes, file has %d: %w", f.reg.Name, fileOff, f.reg.Size, errdefs.ErrInvalid)
	}
	return pieces, nil
}

// groupFiles collects each regular file with its chunk entries.
func groupFiles(toc *chunked.TOC) ([]fileChunks, error) {
	var files []fileChunks
	for i := range toc.Entries {
		e := &toc.Entries[i]
		switch e.Type {
		case chunked.TypeReg:
			files = append(files, fileChunks{reg: e})
		case chunked.TypeChunk:
			if len(files) == 0 || files[len(files)-1].reg.Name != e.Name || i == 0 || (toc.Entries[i-1].Type != chunked.TypeReg && toc.Entries[i-1].Type != chunked.TypeChunk) {
				return nil, fmt.Errorf("chunk entry %q does not follow its file: %w", e.Name, errdefs.ErrInvalid)
			}
			last := &files[len(files)-1]
			last.chunks = append(last.chunks, e)
		}
	}
	return files, nil
}
