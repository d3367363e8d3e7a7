package layer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// RangeFetcher fetches compressed byte ranges of the blob a layer is imported from: fn gets each
// range's exact bytes, possibly concurrently. Its errors reach ImportPartial's caller wrapped
// with %w, so the caller's rule for falling back to a full import can read them.
type RangeFetcher interface {
	FetchRanges(ctx context.Context, ranges []source.Range, fn func(source.Range, io.Reader) error) error
}

// Partial is a zstd:chunked layer whose metadata the caller fetched and parsed: what
// ImportPartial needs besides the file contents.
type Partial struct {
	// Layer is the parsed TOC; its Files are what the store must end up holding.
	Layer *chunked.Layer
	// TOCZst is the TOC's frame as the blob holds it, verified by the parse: the layer record
	// keeps it as it is. TOCSize is its uncompressed size.
	TOCZst  []byte
	TOCSize int64
	// TarSplit is where the tar-split comes from: fetched with the TOC, or predicted.
	TarSplit TarSplitSource
}

// PartialOptions for ImportPartial; the zero value is the defaults.
type PartialOptions struct {
	// Bar counts the compressed bytes of the file ranges as they arrive (nil: nothing shown).
	Bar progress.Bar
	// Log receives a debug line before the file ranges are fetched (nil: nowhere).
	Log *slog.Logger
}

// PartialImported is what a partial import did.
type PartialImported struct {
	store.Layer
	FilesReused    int // distinct contents found whole in the store
	ChunksReused   int // chunks found inside other objects of the store
	ObjectsWritten int
	// RangeBytes are the compressed bytes of the file ranges fetched.
	RangeBytes int64
	// TarSplitPredicted: the recorded tar-split was predicted, not fetched; Note says why a
	// prediction was given up for the fetched one.
	TarSplitPredicted bool
	Note              string
}

// ImportPartial stores a zstd:chunked layer from its parsed metadata and only the file contents
// the store lacks: it plans what to reuse and what to fetch (through fetch), assembles and
// verifies each missing object, checks the DiffID of the tar rebuilt from the tar-split, and
// records the layer. The objects are committed only if every fetch succeeded; the layer is
// recorded only if the DiffID matches. The caller holds the store's shared lock.
func ImportPartial(ctx context.Context, s *store.Store, p Partial, diffID digest.Digest, fetch RangeFetcher, opts PartialOptions) (PartialImported, error) {
	if opts.Bar == nil {
		opts.Bar = progress.Nop.Bar("")
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	od, err := s.OpenObjectDir()
	if err != nil {
		return PartialImported{}, err
	}
	defer od.Close()
	batch := s.NewBatch()
	committed := false
	defer func() {
		if !committed {
			batch.Abort()
		}
	}()
	p.TarSplit.begin(p.Layer) // a prediction needs no file content: it runs beside the planning
	plan := MakePlan(ctx, p.Layer.Files, storeHave{s: s, od: od, batch: batch})
	imp := PartialImported{FilesReused: plan.ReusedFiles, ChunksReused: plan.ReusedChunks}
	pi := &partialImport{p: p, diffID: diffID, plan: plan, od: od, batch: batch, fetch: fetch, log: opts.Log,
		asm: &assembler{ctx: ctx, s: s, batch: batch, bar: opts.Bar}}
	if err := pi.asm.prepare(plan); err != nil {
		return imp, err
	}
	o := pi.fetchAndVerify(ctx)
	committed = o.commitErr == nil
	imp.RangeBytes = pi.rangeBytes
	if err := o.err(); err != nil {
		return imp, err
	}
	imp.ObjectsWritten = len(plan.Files)
	rec, err := p.TarSplit.settle(ctx, p.Layer, diffID, o.v, o.rec, od.Open)
	if err != nil {
		return imp, err
	}
	imp.TarSplitPredicted, imp.Note = rec.predicted, rec.note
	imp.Layer = store.Layer{DiffID: diffID, TarSize: rec.tarSize, ContentSize: contentSize(p.Layer),
		TOCSize: p.TOCSize, TarSplitSize: rec.size}
	// The blob's own TOC frame, verified by the parse, is the layer's record, with the blob's
	// tar-split frame (or the predicted one, verified by the DiffID).
	return imp, batch.PutLayerCompressed(ctx, imp.Layer, p.Layer.Entries, p.TOCZst, rec.zst)
}

// partialImport is one layer's import between planning and recording.
type partialImport struct {
	p          Partial
	diffID     digest.Digest
	plan       *Plan
	od         *store.ObjectDir
	batch      *store.Batch
	asm        *assembler
	fetch      RangeFetcher
	log        *slog.Logger
	rangeBytes int64
}

// outcome is what fetching, verifying and committing found; err ranks it.
type outcome struct {
	v         verdict
	fetchErr  error
	commitErr error
	rec       tarSplitRecord // the tar-split to record, made beside the commit
}

// fetchAndVerify fetches and assembles the missing objects while the tar-split source checks
// the tar-split against the TOC and rebuilds the tar for the DiffID, waiting at each object
// still in flight (tar order is blob order). Once everything is fetched (and so verified), the
// objects are committed while the tar is still being hashed, and the tar-split's record is made
// meanwhile. The goroutines' errors are kept apart and ranked afterwards (outcome.err), not
// raced: which error wins must not depend on timing.
func (pi *partialImport) fetchAndVerify(ctx context.Context) outcome {
	var o outcome
	fetched := make(chan struct{})
	open := func(d digest.Digest) (io.ReadCloser, error) { return pi.asm.open(pi.od, d, fetched) }
	var g sync.WaitGroup // the verification, beside the fetch, then beside the commit
	g.Go(func() { o.v = pi.p.TarSplit.verify(ctx, pi.p.Layer, pi.diffID, open) })
	o.fetchErr = pi.fetchFiles(ctx)
	close(fetched)
	if o.fetchErr != nil {
		o.commitErr = errors.New("not committed")
		g.Wait()
		return o
	}
	g.Go(func() { o.commitErr = pi.batch.Commit(ctx) })
	g.Go(func() { o.rec = pi.p.TarSplit.record(open) })
	g.Wait()
	return o
}

// fetchFiles fetches the planned ranges into the assembler.
func (pi *partialImport) fetchFiles(ctx context.Context) error {
	ranges := pi.plan.Ranges()
	if len(ranges) == 0 {
		return nil
	}
	for _, r := range ranges {
		pi.rangeBytes += r.Length
	}
	pi.log.Debug("layer: fetching ranges", "ranges", len(ranges), "bytes", pi.rangeBytes, "files", len(pi.plan.Files))
	return pi.fetch.FetchRanges(ctx, ranges, pi.asm.receive)
}

// err ranks what went wrong: a disagreement of TOC and fetched tar-split is the root cause of
// whatever else failed (the fetch error stays in the chain, as it may carry a body the caller's
// fallback reads or closes); then the fetch; then a hostile verdict (the layer contradicts
// itself or its DiffID); then the commit. Other verdicts are settled once the objects are in.
func (o outcome) err() error {
	if o.v.metadataErr != nil {
		return errors.Join(o.v.metadataErr, o.fetchErr)
	}
	if o.fetchErr != nil {
		return fmt.Errorf("fetching files: %w", o.fetchErr)
	}
	if errors.Is(o.v.err, errdefs.ErrInvalid) || errors.Is(o.v.err, errdefs.ErrDigestMismatch) {
		return o.v.err
	}
	return o.commitErr
}

func contentSize(l *chunked.Layer) int64 {
	var n int64
	for _, f := range l.Files {
		n += f.Entry.Size
	}
	return n
}

// storeHave answers Have from the store, through the batch, which remembers what it found (so
// the record's check of every object costs no second lookup).
type storeHave struct {
	s     *store.Store
	od    *store.ObjectDir
	batch *store.Batch
}

func (h storeHave) HasObject(d digest.Digest) bool { return h.batch.Stored(h.od, d) }

func (h storeHave) FindChunk(ctx context.Context, d digest.Digest, size int64) (store.ChunkLocation, error) {
	return h.s.FindChunk(ctx, d, size)
}
