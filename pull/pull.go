package pull

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash/crc64"
	"io"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
	"github.com/kura-oci/kura/tarsplit"
	"github.com/kura-oci/kura/tarstream"
)

// Layer pull modes, as reported.
const (
	ModePresent = "present" // the store had the layer
	ModePartial = "partial" // only missing files and chunks were fetched
	ModeFull    = "full"    // the blob was streamed whole into the store's ingest
)

// LayerReport is what pulling one layer cost.
type LayerReport struct {
	Digest         digest.Digest `json:"digest"`
	DiffID         digest.Digest `json:"diffID"`
	Mode           string        `json:"mode"`
	Note           string        `json:"note"`
	BlobBytes      int64         `json:"blobBytes"`
	BytesRequested int64         `json:"bytesRequested"`
	BytesReceived  int64         `json:"bytesReceived"`
	FilesReused    int           `json:"filesReused"`
	ChunksReused   int           `json:"chunksReused"`
	ObjectsWritten int           `json:"objectsWritten"`
	RangesIgnored  bool          `json:"rangesIgnored"`
	// TarSplitPredicted: the tar-split was predicted from a stored layer, not fetched.
	TarSplitPredicted bool    `json:"tarSplitPredicted"`
	Seconds           float64 `json:"seconds"`
}

// Report is what a pull did, per layer and in total.
type Report struct {
	Image          digest.Digest `json:"image"`
	Name           string        `json:"name"`
	Layers         []LayerReport `json:"layers"`
	BlobBytes      int64         `json:"blobBytes"`
	BytesRequested int64         `json:"bytesRequested"`
	BytesReceived  int64         `json:"bytesReceived"`
	FilesReused    int           `json:"filesReused"`
	ChunksReused   int           `json:"chunksReused"`
	ObjectsWritten int           `json:"objectsWritten"`
	Seconds        float64       `json:"seconds"`
}

// Option configures Pull. All defaults are in defaultOptions.
type Option func(*options)

type options struct {
	maxMeta   int64
	jobs      int
	name      string
	progress  progress.Reporter
	noPartial bool
	noPredict bool // tests: always fetch the tar-split
	// metaBudget bounds the memory all layer jobs of a pull hold for metadata (see budget.go).
	metaBudget int64
	budget     *metaBudget // made once per pull from metaBudget
	log        *slog.Logger
	// allowMismatch, when set, stores a layer whose tar is not its config DiffID under its true
	// DiffID, and is told of it (see WithDiffIDMismatchAllowed).
	allowMismatch func(layer, trueDiffID, configDiffID digest.Digest)
}

func defaultOptions() options {
	return options{jobs: 3, progress: progress.Nop, maxMeta: 150 << 20, metaBudget: defaultMetaBudget,
		log: slog.New(slog.DiscardHandler)}
}

// WithJobs bounds how many layers are pulled at once (default 3).
func WithJobs(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.jobs = n
		}
	}
}

// WithName sets the ref the image is stored under (default: the source's name).
func WithName(name string) Option { return func(o *options) { o.name = name } }

// WithProgress reports per-layer progress.
func WithProgress(r progress.Reporter) Option { return func(o *options) { o.progress = r } }

// WithLogger sends debug logs (each layer's partial or full pull and why, ranges and bytes
// fetched, the time of each phase) to l; by default they go nowhere.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithMaxMetadataSize bounds a layer's TOC and tar-split, compressed or not (default 150 MiB, the
// reference's bound). Layers over it are pulled whole.
func WithMaxMetadataSize(n int64) Option { return func(o *options) { o.maxMeta = n } }

// WithoutPartial pulls every layer whole (for comparison and as a last resort).
func WithoutPartial() Option { return func(o *options) { o.noPartial = true } }

// Pull brings the image src names into the store: layers (partially where they are
// zstd:chunked), then the image record, then the ref. It holds the store's shared lock.
func Pull(ctx context.Context, s *store.Store, src source.Source, opts ...Option) (*Report, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	start := time.Now()
	img, err := src.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	o.log.Debug("resolved", "source", img.Name, "config", img.Manifest.Config.Digest, "layers", len(img.Manifest.Layers), "seconds", time.Since(start).Seconds())
	name := o.name
	if name == "" {
		name = img.Name
	}
	if name == "" {
		return nil, fmt.Errorf("the image has no name; give one: %w", errdefs.ErrInvalid)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(img.Manifest.Layers) {
		return nil, fmt.Errorf("config lists %d diff_ids for %d layers: %w", len(diffIDs), len(img.Manifest.Layers), errdefs.ErrInvalid)
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	rep := &Report{Name: name, Layers: make([]LayerReport, len(diffIDs))}
	prev := make([]digest.Digest, len(diffIDs))
	if !o.noPredict {
		prev = predecessors(ctx, s, name, len(diffIDs))
	}
	o.budget = newMetaBudget(o.metaBudget)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	seen := map[digest.Digest]bool{}
	for i, desc := range img.Manifest.Layers {
		diffID := diffIDs[i]
		if seen[diffID] {
			rep.Layers[i] = LayerReport{Digest: desc.Digest, DiffID: diffID, Mode: ModePresent, BlobBytes: desc.Size}
			continue
		}
		seen[diffID] = true
		g.Go(func() error {
			lr, err := pullLayer(gctx, s, src, desc, diffID, prev[i], o)
			if err != nil {
				return fmt.Errorf("layer %s: %w", desc.Digest, err)
			}
			rep.Layers[i] = lr
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	o.log.Debug("layers pulled", "seconds", time.Since(start).Seconds())
	stored, err := s.PutImage(ctx, img.ManifestBytes, img.ConfigBytes, append(sourceOf(src, img), trueDiffIDs(diffIDs, rep)...)...)
	if err != nil {
		return nil, err
	}
	if err := s.SetRef(ctx, name, stored.ID); err != nil {
		return nil, err
	}
	rep.Image = stored.ID
	for _, l := range rep.Layers {
		rep.BlobBytes += l.BlobBytes
		rep.BytesRequested += l.BytesRequested
		rep.BytesReceived += l.BytesReceived
		rep.FilesReused += l.FilesReused
		rep.ChunksReused += l.ChunksReused
		rep.ObjectsWritten += l.ObjectsWritten
	}
	rep.Seconds = time.Since(start).Seconds()
	o.log.Debug("image stored", "image", rep.Image, "name", name, "seconds", rep.Seconds)
	return rep, nil
}

func pullLayer(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, diffID, prev digest.Digest, o options) (LayerReport, error) {
	start := time.Now()
	lr := LayerReport{Digest: desc.Digest, DiffID: diffID, BlobBytes: desc.Size}
	bar := o.progress.Bar(digests.Short(desc.Digest))
	bar.SetTotal(desc.Size)
	if s.HasLayer(diffID) {
		lr.Mode = ModePresent
		bar.Skip(desc.Size)
		bar.Done("already present")
		return lr, nil
	}
	var err error
	if chunked.IsChunked(desc.Annotations) && !o.noPartial {
		o.log.Debug("layer: partial pull", "layer", desc.Digest, "size", desc.Size)
		err = pullPartial(ctx, s, src, desc, diffID, prev, &lr, bar, o)
		if reason, body, ok := fallback(ctx, err); ok {
			o.log.Debug("layer: falling back to a full pull", "layer", desc.Digest, "reason", reason)
			lr = LayerReport{Digest: desc.Digest, DiffID: diffID, BlobBytes: desc.Size, Note: reason + "; pulled in full",
				BytesRequested: lr.BytesRequested, BytesReceived: lr.BytesReceived, RangesIgnored: lr.RangesIgnored}
			err = pullFull(ctx, s, src, desc, diffID, &lr, bar, body)
		}
	} else {
		o.log.Debug("layer: full pull", "layer", desc.Digest, "size", desc.Size, "reason", fullReason(o))
		err = pullFull(ctx, s, src, desc, diffID, &lr, bar, nil)
	}
	if err != nil && o.allowMismatch != nil {
		err = pullMismatched(ctx, s, src, desc, &lr, bar, err, o)
	}
	if err != nil {
		o.log.Debug("layer: failed", "layer", desc.Digest, "err", err)
		bar.Done("failed: " + err.Error())
		return lr, explainDiffID(desc, err)
	}
	bar.Done("")
	lr.Seconds = time.Since(start).Seconds()
	o.log.Debug("layer: done", "layer", desc.Digest, "mode", lr.Mode, "note", lr.Note, "blobBytes", lr.BlobBytes,
		"bytesRequested", lr.BytesRequested, "bytesReceived", lr.BytesReceived, "filesReused", lr.FilesReused,
		"chunksReused", lr.ChunksReused, "objectsWritten", lr.ObjectsWritten, "rangesIgnored", lr.RangesIgnored,
		"tarSplitPredicted", lr.TarSplitPredicted, "seconds", lr.Seconds)
	return lr, nil
}

// fullReason says why a layer is pulled whole without trying a partial pull.
func fullReason(o options) string {
	if o.noPartial {
		return "partial pulls are off (--full)"
	}
	return "not zstd:chunked"
}

// pullFull streams the whole blob into the store's ingest, which dedups file by file and
// checks the DiffID; the blob digest is checked at EOF. body, if not nil, is the blob already
// being sent (a registry that ignored Range): it is read instead of asking again, and closed.
func pullFull(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, diffID digest.Digest, lr *LayerReport, bar progress.Bar, body io.ReadCloser) error {
	lr.Mode = ModeFull
	rc := body
	if rc == nil {
		var err error
		if rc, err = src.OpenBlob(ctx, desc); err != nil {
			return err
		}
	}
	defer rc.Close()
	cr := &progress.Reader{R: rc, Bar: bar}
	imported, err := layer.Import(ctx, s, cr, layer.Options{DiffID: diffID})
	if err != nil {
		return err
	}
	// Read past the end of the tar (skippable frames, padding) so the blob digest is checked.
	if _, err := io.Copy(io.Discard, cr); err != nil {
		return fmt.Errorf("blob %s: %w", desc.Digest, err)
	}
	lr.BytesRequested += desc.Size
	lr.BytesReceived += cr.N
	lr.ObjectsWritten = imported.ObjectsWritten
	lr.DiffID = imported.DiffID // diffID, or the true one when none was given to check
	return nil
}

// pullPartial fetches a zstd:chunked layer's metadata, then only the files and chunks the store
// lacks, assembles each missing object, and checks the DiffID of the tar rebuilt from tar-split.
func pullPartial(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, diffID, prev digest.Digest, lr *LayerReport, bar progress.Bar, o options) error {
	lr.Mode = ModePartial
	bound := chunked.WithMaxMetadataSize(o.maxMeta)
	loc, err := locate(ctx, src, desc, lr, bound)
	if err != nil {
		return err
	}
	if loc.TarSplit.Length == 0 {
		return needFull("zstd:chunked layer in the old format (no tar-split): its DiffID cannot be verified after a partial pull")
	}
	release, err := o.budget.acquire(ctx, loc)
	if err != nil {
		return err
	}
	defer release()
	// An update of a stored layer needs no tar-split from the registry: it is predicted from
	// the predecessor's (package tarsplit) and verified with the DiffID; only a wrong
	// prediction costs a second request for the real one.
	predict := prev != "" && s.HasLayer(prev)
	want := loc.Ranges()
	var known chan knownLayer
	if predict {
		want = []source.Range{loc.TOC}
		known = make(chan knownLayer, 1)
		go func() { known <- loadKnown(ctx, s, prev) }()
	}
	meta, err := fetchMeta(ctx, src, desc, want, lr)
	if err != nil {
		return err
	}
	tocBlob := meta[loc.TOC.Offset]
	var l *chunked.Layer
	checkTarSplit := func() error { return nil }
	if predict {
		l, err = chunked.ParseTOCOnly(loc, tocBlob, bound)
		err = newerFormat(err)
	} else {
		l, checkTarSplit, err = parseFetched(loc, tocBlob, meta[loc.TarSplit.Offset], bound)
	}
	if err != nil {
		return err
	}
	// The prediction needs no file content (CRCs come later): it runs beside the planning.
	var predicted *prediction
	if predict {
		predicted = &prediction{done: make(chan struct{})}
		go func() {
			defer close(predicted.done)
			predictTarSplit(predicted, <-known, l.TOC)
		}()
	}
	od, err := s.OpenObjectDir()
	if err != nil {
		return err
	}
	defer od.Close()
	plan := MakePlan(l.Files, storeHave{ctx: ctx, s: s, od: od})
	lr.FilesReused, lr.ChunksReused = plan.ReusedFiles, plan.ReusedChunks

	batch := s.NewBatch()
	committed := false
	defer func() {
		if !committed {
			batch.Abort()
		}
	}()
	asm := &assembler{ctx: ctx, s: s, batch: batch, bar: bar}
	if err := asm.prepare(plan); err != nil {
		asm.cleanup()
		return err
	}
	// While the missing files arrive, the other core compares TOC and tar-split (predicting the
	// tar-split first if so) and rebuilds the tar for the DiffID, waiting at each file still in
	// flight (tar order is blob order).
	fetched := make(chan struct{})
	openEarly := func(d digest.Digest) (io.ReadCloser, error) { return asm.open(od, d, fetched) }
	early := make(chan verdict, 1)
	go func() {
		if predict {
			early <- predictAndCheck(ctx, predicted, l, diffID, openEarly)
		} else {
			early <- checkFetched(ctx, checkTarSplit, l, diffID, openEarly)
		}
	}()
	var rangeBytes int64 // the bar counts them as they arrive
	if ranges := plan.Ranges(); len(ranges) > 0 {
		for _, r := range ranges {
			rangeBytes += r.Length
		}
		o.log.Debug("layer: fetching ranges", "layer", desc.Digest, "ranges", len(ranges), "bytes", rangeBytes, "files", len(plan.Files))
		drep, ferr := src.GetRanges(ctx, desc, ranges, asm.receive)
		addRangeReport(lr, drep)
		err = ferr
	}
	close(fetched)
	// Every object is verified already: make them durable while the tar is still being hashed,
	// and patch and compress a predicted tar-split's record meanwhile.
	commitDone := make(chan error, 1)
	record := make(chan recordResult, 1)
	if err == nil {
		go func() { commitDone <- batch.Commit(ctx) }()
		if predict {
			go func() { record <- predictedRecord(predicted, openEarly) }()
		}
	} else {
		commitDone <- errors.New("not committed")
	}
	v := <-early
	commitErr := <-commitDone
	committed = commitErr == nil
	asm.cleanup()
	if v.metadataErr != nil {
		// The root cause of whatever else failed; err stays in the chain, as it may carry a
		// body that fallback reads or closes.
		return errors.Join(v.metadataErr, err)
	}
	if err != nil {
		return fmt.Errorf("fetching files: %w", err)
	}
	if !predict && (errors.Is(v.err, errdefs.ErrInvalid) || errors.Is(v.err, errdefs.ErrDigestMismatch)) {
		return v.err // TOC and tar-split disagree, or they do not make the DiffID
	}
	if commitErr != nil {
		return commitErr
	}
	lr.ObjectsWritten = len(plan.Files)
	tarSplitZst, tarSplitSize := meta[loc.TarSplit.Offset], loc.TarSplitUncompressed
	if predict && v.err == nil {
		rec := <-record
		tarSplitZst, tarSplitSize, v.err = rec.zst, rec.size, rec.err
	}
	switch {
	case predict && v.err == nil:
		lr.TarSplitPredicted = true
	case predict:
		// A wrong or impossible prediction: fetch the real tar-split and check as usual.
		lr.Note = "tar-split fetched: " + v.err.Error()
		meta, err := fetchMeta(ctx, src, desc, []source.Range{loc.TarSplit}, lr)
		if err != nil {
			return err
		}
		tarSplitZst = meta[loc.TarSplit.Offset]
		if l, checkTarSplit, err = parseFetched(loc, tocBlob, tarSplitZst, bound); err != nil {
			return err
		}
		if err := checkTarSplit(); err != nil {
			return err
		}
		v.size, v.err = checkDiffID(ctx, l, diffID, od.Open)
	case v.err != nil:
		// The early rebuild could not read something (an object another layer of this pull
		// was still writing, say); now that everything is stored, the store answers.
		v.size, v.err = checkDiffID(ctx, l, diffID, od.Open)
	}
	if v.err != nil {
		return v.err
	}
	// Done: the blob's bytes are either received (files, metadata, the gaps between merged
	// ranges) or skipped, as podman's bar shows them.
	requested := min(lr.BytesRequested, desc.Size)
	bar.Add(max(requested-rangeBytes, 0))
	bar.Skip(desc.Size - requested)
	var content int64
	for _, f := range l.Files {
		content += f.Entry.Size
	}
	// The blob's own TOC frame, verified by the parse, is the layer's record, with the blob's
	// tar-split frame (or the predicted one, verified by the DiffID).
	return s.PutLayerCompressed(ctx, store.Layer{DiffID: diffID, TarSize: v.size, ContentSize: content,
		TOCSize: loc.TOCUncompressed, TarSplitSize: tarSplitSize}, l.TOC, tocBlob, tarSplitZst)
}

// verdict is what the early check of a layer found.
type verdict struct {
	size        int64 // of the rebuilt tar
	err         error
	metadataErr error // TOC and fetched tar-split disagree
}

// knownLayer is a stored layer to predict a tar-split from.
type knownLayer struct {
	tarsplit.Known
	err error
}

func loadKnown(ctx context.Context, s *store.Store, prev digest.Digest) knownLayer {
	toc, err := s.LayerTOC(ctx, prev)
	if err != nil {
		return knownLayer{err: err}
	}
	ts, err := s.LayerTarSplit(ctx, prev)
	return knownLayer{Known: tarsplit.Known{TOC: toc, TarSplit: ts}, err: err}
}

// checkFetched compares TOC and fetched tar-split (checkTarSplit) and, beside it, rebuilds the
// tar for the DiffID.
func checkFetched(ctx context.Context, checkTarSplit func() error, l *chunked.Layer, diffID digest.Digest, open func(digest.Digest) (io.ReadCloser, error)) verdict {
	checked := make(chan error, 1)
	go func() { checked <- checkTarSplit() }()
	n, err := checkDiffID(ctx, l, diffID, open)
	cerr := <-checked
	if cerr != nil {
		err = cerr
	}
	return verdict{size: n, err: err, metadataErr: cerr}
}

// predictAndCheck predicts the layer's tar-split from a stored layer, checks it against the
// TOC, and rebuilds the tar with it for the DiffID. Any error means: fetch the real one.
//
// The tar does not depend on tar-split's CRCs, which the prediction must compute for new
// content, once fetched. So the prediction is made with placeholder CRCs and goes to the
// rebuild right away, beside the fetch; the real CRCs replace the placeholders afterwards.
func predictAndCheck(ctx context.Context, pred *prediction, l *chunked.Layer, diffID digest.Digest, open func(digest.Digest) (io.ReadCloser, error)) verdict {
	<-pred.done
	if pred.err != nil {
		return verdict{err: pred.err}
	}
	checked := make(chan error, 1)
	go func() { checked <- chunked.CheckTarSplitEntries(l.TOC, pred.entries) }()
	lp := *l
	lp.TarSplitEntries = pred.entries
	n, err := checkDiffID(ctx, &lp, diffID, open)
	if cerr := <-checked; err == nil {
		err = cerr
	}
	if err != nil {
		return verdict{err: fmt.Errorf("predicted tar-split: %w", err)}
	}
	return verdict{size: n}
}

type recordResult struct {
	zst  []byte
	size int64 // uncompressed
	err  error
}

// predictedRecord turns a prediction into the layer record's tar-split once the new files are
// in: real CRCs for the placeholders, then JSON, compressed as it is written. The entries the
// rebuild reads are not touched, so it runs beside the rebuild.
func predictedRecord(pred *prediction, open func(digest.Digest) (io.ReadCloser, error)) recordResult {
	<-pred.done
	if pred.err != nil {
		return recordResult{err: pred.err}
	}
	entries, err := withRealCRCs(pred.entries, pred.pending, tarsplit.OpenCRC(open))
	if err != nil {
		return recordResult{err: fmt.Errorf("predicted tar-split: %w", err)}
	}
	zst, n, err := store.CompressMetadataStream(func(w io.Writer) error { return tarstream.WriteTarSplit(w, entries) })
	return recordResult{zst: zst, size: n, err: err}
}

// prediction is a predicted tar-split whose new contents (pending) have placeholder CRCs; its
// fields are set when done closes.
type prediction struct {
	done    chan struct{}
	entries []storage.Entry
	pending []pendingCRC
	err     error
}

// predictTarSplit predicts a layer's tar-split from a stored layer's, with placeholder CRCs.
// It consumes the stored layer's tar-split: the entries share its memory.
func predictTarSplit(p *prediction, k knownLayer, toc *chunked.TOC) {
	if k.err != nil {
		p.err = k.err
		return
	}
	// A layer of another image shares too little to predict from.
	names := make(map[string]bool, len(k.TOC.Entries))
	for i := range k.TOC.Entries {
		names[k.TOC.Entries[i].Name] = true
	}
	shared := 0
	for i := range toc.Entries {
		if names[toc.Entries[i].Name] {
			shared++
		}
	}
	if shared < len(toc.Entries)/2 {
		p.err = fmt.Errorf("the stored layer shares %d of %d entries: nothing to predict from", shared, len(toc.Entries))
		return
	}
	// The tar rebuilt for the DiffID does not depend on CRCs, so contents still to be fetched
	// get a placeholder, known by its address, and their real CRC afterwards.
	placeholder := func(d digest.Digest, size int64) ([]byte, error) {
		b := make([]byte, crc64.Size)
		p.pending = append(p.pending, pendingCRC{d: d, size: size, slot: &b[0]})
		return b, nil
	}
	var err error
	if p.entries, _, err = tarsplit.PredictEntries(toc, []tarsplit.Known{k.Known}, placeholder); err != nil {
		p.err = fmt.Errorf("predicting the tar-split: %w", err)
	}
}

// pendingCRC is a content whose CRC a prediction left as a placeholder: the slice starting at
// slot, which every file entry of that content carries.
type pendingCRC struct {
	d    digest.Digest
	size int64
	slot *byte
}

// withRealCRCs returns a copy of a prediction's entries with each placeholder replaced by its
// content's real CRC. Every placeholder must be found.
func withRealCRCs(entries []storage.Entry, pending []pendingCRC, crc tarsplit.CRCFunc) ([]storage.Entry, error) {
	if len(pending) == 0 {
		return entries, nil
	}
	real := make(map[*byte][]byte, len(pending))
	for _, p := range pending {
		sum, err := crc(p.d, p.size)
		if err != nil {
			return nil, err
		}
		real[p.slot] = sum
	}
	out := slices.Clone(entries)
	found := make(map[*byte]bool, len(pending))
	for i := range out {
		e := &out[i]
		if e.Type != storage.FileType || len(e.Payload) == 0 {
			continue
		}
		if sum, ok := real[&e.Payload[0]]; ok {
			found[&e.Payload[0]] = true
			e.Payload = sum
		}
	}
	for _, p := range pending {
		if !found[p.slot] {
			return nil, fmt.Errorf("the CRC placeholder of %s is in no entry: %w", p.d, errdefs.ErrInvalid)
		}
	}
	return out, nil
}

// fetchMeta fetches metadata ranges of a blob whole, keyed by offset.
func fetchMeta(ctx context.Context, src source.Source, desc ocispec.Descriptor, want []source.Range, lr *LayerReport) (map[int64][]byte, error) {
	meta := map[int64][]byte{}
	var mu sync.Mutex
	ranges := make([]source.Range, len(want))
	for i, r := range want {
		ranges[i] = source.Range{Offset: r.Offset, Length: r.Length}
	}
	rep, err := src.GetRanges(ctx, desc, ranges, func(r source.Range, rd io.Reader) error {
		b := make([]byte, r.Length)
		n, err := io.ReadFull(rd, b)
		if err == io.ErrUnexpectedEOF {
			err = nil // a short range: the length check below says so
		}
		if err != nil {
			return err
		}
		b = b[:n]
		mu.Lock()
		meta[r.Offset] = b
		mu.Unlock()
		return nil
	})
	addRangeReport(lr, rep)
	if err != nil {
		return nil, fmt.Errorf("fetching metadata: %w", err)
	}
	for _, r := range want {
		if int64(len(meta[r.Offset])) != r.Length {
			return nil, fmt.Errorf("fetching metadata: got %d of %d bytes at %d: %w", len(meta[r.Offset]), r.Length, r.Offset, errdefs.ErrInvalid)
		}
	}
	return meta, nil
}

func addRangeReport(lr *LayerReport, r source.Fetched) {
	lr.BytesRequested += r.BytesRequested
	lr.BytesReceived += r.BytesReceived
	lr.RangesIgnored = lr.RangesIgnored || r.RangesIgnored
}

// checkDiffID rebuilds the layer's tar from its tar-split and objects (opened by open) and
// compares its sha256 with the DiffID the config promises.
func checkDiffID(ctx context.Context, l *chunked.Layer, diffID digest.Digest, open func(digest.Digest) (io.ReadCloser, error)) (int64, error) {
	byName := make(map[string]digest.Digest, len(l.Files))
	for _, f := range l.Files {
		byName[f.Entry.Name] = f.Digest
	}
	h := sha256.New()
	err := tarstream.RebuildEntries(l.TarSplitEntries, func(name string, size int64) (io.ReadCloser, error) {
		d, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("tar-split names %q, which the TOC has no content for: %w", name, errdefs.ErrInvalid)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return open(d)
	}, h)
	if err != nil {
		return 0, fmt.Errorf("rebuilding the tar: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return 0, fmt.Errorf("rebuilt tar: %w", &layer.DiffIDMismatchError{Got: got, Want: diffID})
	}
	// The rebuild wrote every segment and exactly each file's size (else it failed).
	var size int64
	for _, e := range l.TarSplitEntries {
		if e.Type == storage.SegmentType {
			size += int64(len(e.Payload))
		} else {
			size += e.Size
		}
	}
	return size, nil
}

// storeHave answers Have from the store.
type storeHave struct {
	ctx context.Context
	s   *store.Store
	od  *store.ObjectDir
}

func (h storeHave) HasObject(d digest.Digest) bool { return h.od.Has(d) }

func (h storeHave) FindChunk(d digest.Digest, size int64) (ChunkLocation, bool) {
	loc, err := h.s.FindChunk(h.ctx, d, size)
	if err != nil {
		return ChunkLocation{}, false
	}
	return ChunkLocation{Object: loc.Object, Offset: loc.Offset}, true
}
