package pull

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
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
	noRef     bool
	prev      []digest.Digest // WithPredecessors
	// metaBudget bounds the memory all layer jobs of a pull hold for metadata (see budget.go).
	metaBudget int64
	budget     *metaBudget // made once per pull from metaBudget
	log        *slog.Logger
	// allowMismatch, when set, stores a layer whose tar is not its config DiffID under its true
	// DiffID, and is told of it (see WithDiffIDMismatchAllowed).
	allowMismatch func(layer, trueDiffID, configDiffID digest.Digest)
	fillTimeout   time.Duration   // lazy pulls: bound of one on-demand fill (0: lazy's default)
	lazyHold      <-chan struct{} // lazy pulls: the background fetch waits until it is closed
	lazyMode      LazyMode        // lazy pulls: the fill service (zero: LazyAuto)
	lazyComplete  func(LazyMode)  // lazy pulls: called once the image is recorded
	lazyStacked   bool            // lazy pulls: mounts over the placeholders get an overlay on top
	lazyMountDir  string          // lazy pulls: serve the image's merged tree there (WithLazyMount)
	lazyTarSizes  bool            // lazy pulls: fetch the tar-split before mountable, for the tars' sizes
	startup       StartupWindow   // lazy pulls: when the background fetch begins (zero: defaults)
	bulk          bulkLimits      // lazy pulls: the background fetch's batches (zero: defaults)

	// layerEntries, when set, is told each partially pulled layer's entries (WithLayerEntries).
	layerEntries LayerEntriesFunc
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

// WithoutRef stores the image record and sets no ref: the caller keeps the image by a use it
// records while it still holds the store's shared lock, taken before Pull (an image without a
// name or a use is gc's). The containerd snapshotter pulls so: its layers live exactly as long
// as snapshots use them.
func WithoutRef() Option { return func(o *options) { o.noRef = true } }

// WithPredecessors gives the stored layers the image's layers are likely updates of, by
// position (the last one stands for any further layer), instead of the newest stored image of
// the same repository's, which an image pulled WithoutRef has no ref to be found by.
func WithPredecessors(layers []digest.Digest) Option { return func(o *options) { o.prev = layers } }

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

// predecessors are the stored layers each of n layers is likely an update of ("" for none).
func (o options) predecessors(ctx context.Context, s *store.Store, name string, n int) []digest.Digest {
	prev := make([]digest.Digest, n)
	switch {
	case o.noPredict:
	case o.prev != nil:
		for i := range prev {
			if len(o.prev) > 0 {
				prev[i] = o.prev[min(i, len(o.prev)-1)]
			}
		}
	default:
		prev = predecessors(ctx, s, name, n)
	}
	return prev
}

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
	name, diffIDs, err := nameAndDiffIDs(o, img)
	if err != nil {
		return nil, err
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()

	rep := &Report{Name: name, Layers: make([]LayerReport, len(diffIDs))}
	prev := o.predecessors(ctx, s, name, len(diffIDs))
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
	if !o.noRef {
		if err := s.SetRef(ctx, name, stored.ID); err != nil {
			return nil, err
		}
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
		return lr, explainDiffID(desc, err, lr.Mode == ModePartial)
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

// pullPartial pulls a zstd:chunked layer partially, in phases: locate its metadata, fetch it
// (the tar-split only if it cannot be predicted from a stored layer), parse it, then hand it to
// the store's partial import (layer.ImportPartial), which plans, fetches through this source only
// the files and chunks the store lacks, assembles and verifies them, checks the DiffID and
// records the layer. Whatever makes a partial pull impossible fails with a reason for fallback.
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
	part, err := fetchMetadata(ctx, s, src, desc, loc, prev, lr, bound)
	if err != nil {
		return err
	}
	done := o.handEntries(diffID, prev, part.Layer.Entries)
	imp, err := layer.ImportPartial(ctx, s, part, diffID, rangeFetcher{src: src, desc: desc, lr: lr},
		layer.PartialOptions{Bar: bar, Log: o.log.With("layer", desc.Digest)})
	done(err == nil)
	if err != nil {
		return err
	}
	lr.FilesReused, lr.ChunksReused, lr.ObjectsWritten = imp.FilesReused, imp.ChunksReused, imp.ObjectsWritten
	lr.TarSplitPredicted, lr.Note = imp.TarSplitPredicted, imp.Note
	// Done: the blob's bytes are either received (files, metadata, the gaps between merged
	// ranges) or skipped, as podman's bar shows them.
	requested := min(lr.BytesRequested, desc.Size)
	bar.Add(max(requested-imp.RangeBytes, 0))
	bar.Skip(desc.Size - requested)
	return nil
}

// fetchMetadata fetches a layer's TOC and parses it, with the tar-split fetched beside it or,
// for an update of a stored layer (prev), predicted from that layer's: an update needs no
// tar-split from the registry, and only a wrong prediction costs a second request for the real
// one.
func fetchMetadata(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, loc chunked.Location, prev digest.Digest, lr *LayerReport, bound chunked.ReadOption) (layer.Partial, error) {
	if prev != "" && s.HasLayer(prev) {
		return fetchTOCPredicted(ctx, s, src, desc, loc, prev, lr, bound)
	}
	meta, err := fetchMeta(ctx, src, desc, loc.Ranges(), lr)
	if err != nil {
		return layer.Partial{}, err
	}
	tocBlob := meta[loc.TOC.Offset]
	l, fetched, err := parseFetched(loc, tocBlob, meta[loc.TarSplit.Offset], bound)
	if err != nil {
		return layer.Partial{}, err
	}
	dropWire(l)
	return layer.Partial{Layer: l, TOCZst: tocBlob, TOCSize: loc.TOCUncompressed, TarSplit: fetched}, nil
}

// fetchTOCPredicted fetches only the TOC; the tar-split is predicted from stored layer prev's
// (layer.PredictTarSplit), and fetched only when the import finds the prediction wrong, or
// when prev is "" or not stored: a lazy pull so puts off the tar-split until its completion.
func fetchTOCPredicted(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, loc chunked.Location, prev digest.Digest, lr *LayerReport, bound chunked.ReadOption) (layer.Partial, error) {
	var tocBlob []byte
	predicted := layer.PredictTarSplit(ctx, s, prev, func(ctx context.Context) (*layer.FetchedTarSplit, error) {
		meta, err := fetchMeta(ctx, src, desc, []source.Range{loc.TarSplit}, lr)
		if err != nil {
			return nil, err
		}
		_, ts, err := parseFetched(loc, tocBlob, meta[loc.TarSplit.Offset], bound)
		return ts, err
	})
	meta, err := fetchMeta(ctx, src, desc, []source.Range{loc.TOC}, lr)
	if err != nil {
		return layer.Partial{}, err
	}
	tocBlob = meta[loc.TOC.Offset]
	l, err := chunked.ParseTOCOnly(loc, tocBlob, bound)
	if err != nil {
		return layer.Partial{}, newerFormat(err)
	}
	dropWire(l)
	return layer.Partial{Layer: l, TOCZst: tocBlob, TOCSize: loc.TOCUncompressed, TarSplit: predicted}, nil
}

// dropWire lets go of what a parse keeps that a partial import does not read: the TOC's wire
// form (the layer record keeps the blob's compressed TOC frame, and everything else works on
// Entries) and the tar-split's JSON (its entries are decoded apart from it). For a base image
// that is ten megabytes that would otherwise live until the layer is recorded, at the pull's
// peak of memory.
func dropWire(l *chunked.Layer) { l.TOC, l.TarSplit = nil, nil }

// rangeFetcher fetches a layer's file ranges for layer.ImportPartial, counting the bytes in the
// layer's report.
type rangeFetcher struct {
	src  source.Source
	desc ocispec.Descriptor
	lr   *LayerReport
}

func (f rangeFetcher) FetchRanges(ctx context.Context, ranges []source.Range, fn func(source.Range, io.Reader) error) error {
	rep, err := f.src.GetRanges(ctx, f.desc, ranges, fn)
	addRangeReport(f.lr, rep)
	return err
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

// nameAndDiffIDs is the name a pull records img under (WithName's, else the source's) and the
// config's DiffIDs, one per manifest layer: what Pull and PullLazy check before they touch the store.
func nameAndDiffIDs(o options, img *source.Image) (string, []digest.Digest, error) {
	name := o.name
	if name == "" {
		name = img.Name
	}
	if name == "" {
		return "", nil, fmt.Errorf("the image has no name; give one: %w", errdefs.ErrInvalid)
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(img.Manifest.Layers) {
		return "", nil, fmt.Errorf("config lists %d diff_ids for %d layers: %w", len(diffIDs), len(img.Manifest.Layers), errdefs.ErrInvalid)
	}
	return name, diffIDs, nil
}
