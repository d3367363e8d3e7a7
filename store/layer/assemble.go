package layer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"sync/atomic"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// assembler turns fetched frames and local chunks into store objects. Files made of one
// remote piece are decompressed straight into a store writer. Files of several pieces are
// assembled in a sparse scratch file of the batch (zeros chunks stay holes) by offset, so pieces
// may arrive in any order and from concurrent requests; the last piece to land moves the file
// into the store, where its sha256 is verified.
type assembler struct {
	ctx   context.Context
	s     *store.Store
	batch *store.Batch
	bar   progress.Bar

	byOffset map[int64]remotePiece // compressed offset → piece; read-only once fetching starts
	// ready has a channel per planned object, closed once the object is in the batch (or the
	// store): the DiffID check reads objects while others are still being fetched.
	ready map[digest.Digest]chan struct{}
}

type pendingFile struct {
	file      *chunked.File
	path      string // scratch file; empty for single-piece files
	remaining atomic.Int32
}

type remotePiece struct {
	pf     *pendingFile
	chunk  chunked.FileChunk
	pieces []Piece // a streamed file's pieces, in order
}

// prepare writes local chunks into scratch files (re-hashing them; a chunk that no longer matches
// is fetched instead) and indexes the pieces to fetch. It may change piece kinds in plan.
func (a *assembler) prepare(plan *Plan) error {
	a.byOffset = map[int64]remotePiece{}
	a.ready = make(map[digest.Digest]chan struct{}, len(plan.Files))
	for i := range plan.Files {
		a.ready[plan.Files[i].File.Entry.Digest] = make(chan struct{})
	}
	for i := range plan.Files {
		fp := &plan.Files[i]
		pf := &pendingFile{file: fp.File}
		if fp.Stream {
			pf.remaining.Store(1)
			a.byOffset[fp.File.Range.Offset] = remotePiece{pf: pf, chunk: chunked.FileChunk{
				Chunk: layerfs.Chunk{Size: fp.File.Entry.Size, Digest: fp.File.Entry.Digest}, Range: fp.File.Range}, pieces: fp.Pieces}
			continue
		}
		if len(fp.Pieces) == 1 && fp.Pieces[0].Kind == PieceRemote {
			pf.remaining.Store(1)
			a.byOffset[fp.Pieces[0].Chunk.Range.Offset] = remotePiece{pf: pf, chunk: fp.Pieces[0].Chunk}
			continue
		}
		f, err := a.batch.Scratch()
		if err != nil {
			return fmt.Errorf("assembling %q: %w", fp.File.Entry.Name, err)
		}
		pf.path = f.Name()
		err = a.writeLocal(f, fp)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return fmt.Errorf("assembling %q: %w", fp.File.Entry.Name, err)
		}
		var remote int32
		for _, pc := range fp.Pieces {
			if pc.Kind == PieceRemote {
				remote++
				a.byOffset[pc.Chunk.Range.Offset] = remotePiece{pf: pf, chunk: pc.Chunk}
			}
		}
		pf.remaining.Store(remote)
		if remote == 0 {
			if err := a.finish(pf); err != nil {
				return err
			}
		}
	}
	return nil
}

// writeLocal sizes the scratch file (holes for zeros) and copies in the chunks found in the store.
func (a *assembler) writeLocal(f *os.File, fp *FilePlan) error {
	if err := f.Truncate(fp.File.Entry.Size); err != nil {
		return err
	}
	for j := range fp.Pieces {
		pc := &fp.Pieces[j]
		if pc.Kind != PieceLocal {
			continue
		}
		if err := a.copyLocal(f, pc); err != nil {
			if errors.Is(err, errdefs.ErrDigestMismatch) || errors.Is(err, errdefs.ErrNotFound) {
				pc.Kind = PieceRemote // the store copy changed or vanished: fetch it instead
				continue
			}
			return err
		}
	}
	return nil
}

func (a *assembler) copyLocal(dst *os.File, pc *Piece) error {
	src, err := a.s.Open(a.ctx, pc.Local.Object)
	if err != nil {
		return err
	}
	defer src.Close()
	h := sha256.New()
	w := io.MultiWriter(io.NewOffsetWriter(dst, pc.Chunk.Offset), h)
	n, err := io.Copy(w, io.NewSectionReader(src, pc.Local.Offset, pc.Chunk.Size))
	if err != nil {
		return err
	}
	if n != pc.Chunk.Size || digest.NewDigest(digest.SHA256, h) != pc.Chunk.Digest {
		return fmt.Errorf("local chunk %s in %s: %w", pc.Chunk.Digest, pc.Local.Object, errdefs.ErrDigestMismatch)
	}
	return nil
}

// receive is the GetRanges callback: it decompresses one range into its file.
func (a *assembler) receive(r source.Range, rd io.Reader) error {
	rp, ok := a.byOffset[r.Offset]
	if !ok || rp.chunk.Range.Length != r.Length {
		return fmt.Errorf("received range [%d, %d) that was not asked for: %w", r.Offset, r.End(), errdefs.ErrInvalid)
	}
	defer a.bar.Add(r.Length)
	if rp.pf.path == "" {
		return a.stream(rp, rd)
	}
	f, err := os.OpenFile(rp.pf.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = chunked.DecodeFrames(rd, rp.chunk.Size, rp.chunk.Digest, io.NewOffsetWriter(f, rp.chunk.Offset))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("file %q: %w", rp.pf.file.Entry.Name, err)
	}
	if rp.pf.remaining.Add(-1) == 0 {
		return a.finish(rp.pf)
	}
	return nil
}

// stream decompresses a file fetched as one range straight into the store, which verifies its
// digest; a streamed file's zeros chunks become holes.
func (a *assembler) stream(rp remotePiece, rd io.Reader) error {
	f := rp.pf.file
	w, err := a.batch.Ingest(a.ctx, f.Entry.Digest, f.Entry.Size)
	if errors.Is(err, errdefs.ErrAlreadyExists) {
		close(a.ready[f.Entry.Digest])
		return nil // another layer of this pull stored it meanwhile
	}
	if err != nil {
		return err
	}
	if len(rp.pieces) == 0 {
		err = chunked.DecodeFramesUnverified(rd, f.Entry.Size, w)
	} else {
		err = decodePieces(rp.pieces, rd, w)
	}
	if err != nil {
		w.Abort()
		return fmt.Errorf("file %q: %w", f.Entry.Name, err)
	}
	if _, err := w.Commit(a.ctx); err != nil {
		w.Abort()
		return fmt.Errorf("file %q: %w", f.Entry.Name, err)
	}
	close(a.ready[f.Entry.Digest])
	return nil
}

// finish moves an assembled scratch file into the store, which checks its sha256.
func (a *assembler) finish(pf *pendingFile) error {
	f, err := os.Open(pf.path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := store.WriteObject(a.ctx, a.batch, f, pf.file.Entry.Digest, pf.file.Entry.Size); err != nil {
		return fmt.Errorf("file %q: %w", pf.file.Entry.Name, err)
	}
	close(a.ready[pf.file.Entry.Digest])
	return a.batch.DropScratch(pf.path)
}

// open opens object d for the DiffID check: a planned object once it is ready (from the
// batch, where it waits for the commit), any other from the store. It fails if fetching ended
// (fetched closed) without the object.
func (a *assembler) open(od *store.ObjectDir, d digest.Digest, fetched <-chan struct{}) (io.ReadCloser, error) {
	if ch, planned := a.ready[d]; planned {
		select {
		case <-ch:
		case <-fetched:
			select {
			case <-ch:
			default:
				return nil, fmt.Errorf("object %s was not fetched: %w", d, errdefs.ErrNotFound)
			}
		case <-a.ctx.Done():
			return nil, a.ctx.Err()
		}
		if f, err := a.batch.OpenPending(d); err == nil {
			return f, nil
		}
	}
	return od.Open(d)
}

// decodePieces decodes a streamed file's chunks in order from rd, its contiguous frames.
func decodePieces(pieces []Piece, rd io.Reader, w store.Writer) error {
	for _, pc := range pieces {
		frames := io.LimitReader(rd, pc.Chunk.Range.Length)
		if pc.Kind == PieceZeros {
			if _, err := io.Copy(io.Discard, frames); err != nil {
				return err
			}
			if err := w.WriteHole(pc.Chunk.Size); err != nil {
				return err
			}
			continue
		}
		if err := chunked.DecodeFramesUnverified(frames, pc.Chunk.Size, w); err != nil {
			return err
		}
	}
	return nil
}
