package layer

import (
	"context"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// PieceKind says where the bytes of one piece of a file come from.
type PieceKind int

const (
	// PieceRemote is fetched from the blob: the compressed frames in Range.
	PieceRemote PieceKind = iota
	// PieceLocal is copied from an object already in the store (re-hashed before use).
	PieceLocal
	// PieceZeros is a run of zero bytes; it becomes a hole and is never fetched.
	PieceZeros
)

// Piece is one chunk of a file to assemble.
type Piece struct {
	Kind  PieceKind
	Chunk chunked.FileChunk
	Local store.ChunkLocation // PieceLocal: where the same bytes are stored
}

// FilePlan is how to assemble one object that the store lacks.
type FilePlan struct {
	File   *chunked.File
	Pieces []Piece // in file order, tiling the file
	// Stream is set when nothing of the file is in the store: it is fetched as one range (its
	// frames are contiguous) and decoded chunk after chunk straight into the store, zeros
	// chunks as holes, instead of being assembled piece by piece in a temp file.
	Stream bool
}

// Have answers what the local store already holds: whole objects, and chunks inside them.
type Have interface {
	HasObject(d digest.Digest) bool
	store.ChunkFinder
}

// Plan says, for one zstd:chunked layer, which contents are reused and which are fetched.
type Plan struct {
	Files        []FilePlan // objects to assemble, in blob order
	ReusedFiles  int        // distinct contents found whole in the store
	ReusedChunks int        // chunks found in other objects of the store
	ZeroChunks   int
	// SkippedBytes are compressed file bytes that need not be fetched (reused, holes, duplicates).
	SkippedBytes int64
	// FetchBytes are compressed file bytes that must be fetched.
	FetchBytes int64
}

// Ranges returns the compressed byte ranges to fetch, in blob order.
func (p *Plan) Ranges() []source.Range {
	var rs []source.Range
	for _, f := range p.Files {
		if f.Stream {
			rs = append(rs, source.Range{Offset: f.File.Range.Offset, Length: f.File.Range.Length})
			continue
		}
		for _, pc := range f.Pieces {
			if pc.Kind == PieceRemote {
				rs = append(rs, source.Range{Offset: pc.Chunk.Range.Offset, Length: pc.Chunk.Range.Length})
			}
		}
	}
	return rs
}

// MakePlan decides how to obtain every regular file of a layer that chunked.Parse validated
// (so chunks tile their files and frames lie inside the blob).
func MakePlan(ctx context.Context, files []chunked.File, have Have) *Plan {
	present := haveObjects(files, have)
	p := &Plan{}
	planned := make(map[digest.Digest]bool, len(files))
	for i := range files {
		f := &files[i]
		d, chunks := f.Entry.Digest, f.Entry.Chunks
		if planned[d] || present[i] {
			if !planned[d] {
				p.ReusedFiles++
				planned[d] = true
			}
			p.SkippedBytes += f.Range.Length
			continue
		}
		planned[d] = true
		fp := FilePlan{File: f, Pieces: make([]Piece, len(chunks))}
		for j := range chunks {
			c := f.Chunk(j)
			pc := Piece{Kind: PieceRemote, Chunk: c}
			switch {
			case c.Zeros:
				pc.Kind = PieceZeros
				p.ZeroChunks++
				p.SkippedBytes += c.Range.Length
			case len(chunks) > 1:
				if loc, err := have.FindChunk(ctx, c.Digest, c.Size); err == nil {
					pc.Kind, pc.Local = PieceLocal, loc
					p.ReusedChunks++
					p.SkippedBytes += c.Range.Length
					break
				}
				p.FetchBytes += c.Range.Length
			default:
				p.FetchBytes += c.Range.Length
			}
			fp.Pieces[j] = pc
		}
		if len(chunks) > 1 && streamable(&fp) {
			fp.Stream = true
			for _, pc := range fp.Pieces {
				if pc.Kind == PieceZeros { // its tiny frame now comes along
					p.SkippedBytes -= pc.Chunk.Range.Length
					p.FetchBytes += pc.Chunk.Range.Length
				}
			}
		}
		p.Files = append(p.Files, fp)
	}
	return p
}

// haveObjects asks have about every file, several at a time: each answer is a stat, mostly
// waiting on the kernel's path lookup.
func haveObjects(files []chunked.File, have Have) []bool {
	present := make([]bool, len(files))
	const workers = 4
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(files); i += workers {
				present[i] = have.HasObject(files[i].Entry.Digest)
			}
		})
	}
	wg.Wait()
	return present
}

// streamable says whether a file can be fetched as one range and decoded in order: no piece
// comes from the store, and its chunks' frames follow each other.
func streamable(fp *FilePlan) bool {
	end := fp.File.Range.Offset
	for _, pc := range fp.Pieces {
		if pc.Kind == PieceLocal || pc.Chunk.Range.Offset != end {
			return false
		}
		end = pc.Chunk.Range.End()
	}
	return end == fp.File.Range.End()
}
