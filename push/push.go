// Package push owns writing images out: layers from the store (Push) or from another registry
// or OCI layout (Copy) are recompressed (zstd:chunked, zstd or gzip), several layers at once,
// and sent to a registry (HEAD first, cross-repository mount, chunked resumable uploads) or
// written to an OCI layout, followed by the config and an OCI manifest.
package push

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// LayerReport is what writing one layer did.
type LayerReport struct {
	Digest digest.Digest `json:"digest"`
	DiffID digest.Digest `json:"diffID"`
	Size   int64         `json:"size"`
	// Status is StatusUploaded, StatusExisted, StatusMounted, StatusWritten or StatusDuplicate.
	Status string `json:"status"`
	// InputBytes are the bytes read to make the layer: the tar, or the source blob.
	InputBytes int64   `json:"inputBytes"`
	Seconds    float64 `json:"seconds"`
}

// Report is what a push or copy did, per layer and in total.
type Report struct {
	// Image is the digest of the manifest written.
	Image       digest.Digest `json:"image"`
	Destination string        `json:"destination"`
	Format      Format        `json:"format"`
	Level       int           `json:"level"`
	Layers      []LayerReport `json:"layers"`
	// Size sums the layer blobs; BytesSent those uploaded or written.
	Size      int64   `json:"size"`
	BytesSent int64   `json:"bytesSent"`
	Uploaded  int     `json:"uploaded"`
	Existed   int     `json:"existed"`
	Mounted   int     `json:"mounted"`
	Seconds   float64 `json:"seconds"`
}

// Option configures Push and Copy. All defaults are in defaultOptions.
type Option func(*options)

type options struct {
	format      Format
	level       int // 0: the format's default
	jobs        int
	concurrency int
	progress    progress.Reporter
	formatSet   bool // WithFormat was given: with preserve, layers must already be in it
	preserve    bool
	// allowMismatch, when set, accepts a layer whose tar is not its config DiffID (see
	// WithDiffIDMismatchAllowed).
	allowMismatch func(layer, trueDiffID, configDiffID digest.Digest)
	log           *slog.Logger
}

func defaultOptions() options {
	return options{format: ZstdChunked, jobs: 3, concurrency: runtime.GOMAXPROCS(0), progress: progress.Nop,
		log: slog.New(slog.DiscardHandler)}
}

// WithLogger sends debug logs (each layer recompressed or copied by digest, and whether it was
// uploaded, mounted, found at the destination or written, with its bytes and time; the config,
// manifest and index written) to l; by default they go nowhere.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.log = l } }

// WithFormat sets the layer compression (default zstd:chunked).
func WithFormat(f Format) Option {
	return func(o *options) { o.format, o.formatSet = f, true }
}

// WithPreserveDigests makes Copy write the source's blobs and manifest unchanged (skopeo's
// --preserve-digests): no layer is recompressed, and a copy that WithFormat would make change a
// layer is refused with errdefs.ErrUnsupported.
func WithPreserveDigests() Option { return func(o *options) { o.preserve = true } }

// WithLevel sets the compression level (default: Format.DefaultLevel).
func WithLevel(level int) Option { return func(o *options) { o.level = level } }

// WithJobs bounds how many layers are compressed and sent at once (default 3).
func WithJobs(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.jobs = n
		}
	}
}

// WithConcurrency bounds the compressors working on one layer (default GOMAXPROCS). The
// output does not depend on it.
func WithConcurrency(n int) Option {
	return func(o *options) {
		if n > 0 {
			o.concurrency = n
		}
	}
}

// WithProgress reports per-layer progress.
func WithProgress(r progress.Reporter) Option { return func(o *options) { o.progress = r } }

// image is one image to write, whichever side it comes from (the store or a source).
type image struct {
	manifest ocispec.Manifest // for its annotations
	// manifestBytes and manifestType are the source manifest as received (Copy only): written
	// unchanged when no layer is recompressed, so that its digest stays.
	manifestBytes []byte
	manifestType  string
	config        []byte
	layers        []layerSource
	// child: the manifest is one an index names, stored by digest only (CopyAll).
	child bool
}

type layerSource struct {
	diffID digest.Digest
	// blob is the source blob's descriptor (Copy only): a layer already in the requested
	// format is copied by it, not recompressed.
	blob ocispec.Descriptor
	// size is the byte count open delivers, for progress (the tar or the source blob).
	size int64
	// open streams the layer: a tar, or a blob compressed any way tarstream.Decompress knows.
	// Reading it to EOF checks it.
	open func(ctx context.Context) (io.ReadCloser, error)
}

// ImageStore is what Push reads of a store, under its shared lock: an image's record, manifest
// and config, each layer's record (for its tar size), and what layer.Export rebuilds a layer's
// tar from. *store.Store implements it.
type ImageStore interface {
	RLock(ctx context.Context) (func(), error)
	ResolveImage(ctx context.Context, nameOrID string) (store.Image, error)
	ImageManifest(ctx context.Context, id digest.Digest) ([]byte, error)
	ImageConfig(ctx context.Context, id digest.Digest) ([]byte, error)
	Layer(ctx context.Context, diffID digest.Digest) (store.Layer, error)
	layer.ExportSource
}

// Push writes the stored image named nameOrID (a ref, an ID or a unique ID prefix) to dest.
// Layers are rebuilt from the store's objects and recompressed; the config is sent unchanged
// (the DiffIDs of recompressed layers are those of the same tars), except for an image recorded
// with configDiffIDs (pulled with --allow-diffid-mismatch), whose config gets the true DiffIDs. It
// holds the store's shared lock, so gc cannot remove what is being read.
func Push(ctx context.Context, s ImageStore, nameOrID string, dest Destination, opts ...Option) (*Report, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	img, err := s.ResolveImage(ctx, nameOrID)
	if err != nil {
		return nil, err
	}
	mb, err := s.ImageManifest(ctx, img.ID)
	if err != nil {
		return nil, err
	}
	config, err := s.ImageConfig(ctx, img.ID)
	if err != nil {
		return nil, err
	}
	m, err := registry.ParseManifest(mb)
	if err != nil {
		return nil, fmt.Errorf("stored manifest of %s: %w", img.ID, err)
	}
	if img.ConfigDiffIDs != nil {
		// Pulled with a DiffID mismatch allowed: the tars sent are the true ones, and so must
		// the config's DiffIDs be.
		if config, err = correctConfig(config, img.Layers); err != nil {
			return nil, fmt.Errorf("config of %s: %w", img.ID, err)
		}
	}
	src := image{manifest: m, config: config}
	for _, diffID := range img.Layers {
		l, err := s.Layer(ctx, diffID)
		if err != nil {
			return nil, err
		}
		src.layers = append(src.layers, layerSource{diffID: diffID, size: l.TarSize, open: func(ctx context.Context) (io.ReadCloser, error) {
			pr, pw := io.Pipe()
			done := make(chan struct{})
			go func() {
				defer close(done)
				pw.CloseWithError(layer.Export(ctx, s, diffID, pw))
			}()
			return &exportReader{PipeReader: pr, done: done}, nil
		}})
	}
	rep, _, err := write(ctx, src, dest, opts)
	return rep, err
}

// Copy writes the image src names to dest without the store. A source layer already in the
// requested format is copied by digest (mounted, found, or streamed through verified); any
// other (plain, gzip, zstd or zstd:chunked) is streamed, decompressed, recompressed and checked
// against the config's DiffID. When no layer is recompressed the manifest is copied unchanged.
func Copy(ctx context.Context, src source.Source, dest Destination, opts ...Option) (*Report, error) {
	rep, _, err := copyImage(ctx, src, dest, false, opts)
	return rep, err
}

// copyImage is Copy; child stores the manifest by digest only, for an index to name.
func copyImage(ctx context.Context, src source.Source, dest Destination, child bool, opts []Option) (*Report, ocispec.Descriptor, error) {
	img, err := src.Resolve(ctx)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(img.Manifest.Layers) {
		return nil, ocispec.Descriptor{}, fmt.Errorf("config lists %d diff_ids for %d layers: %w", len(diffIDs), len(img.Manifest.Layers), errdefs.ErrInvalid)
	}
	s := image{manifest: img.Manifest, manifestBytes: img.ManifestBytes, manifestType: img.Descriptor.MediaType, config: img.ConfigBytes, child: child}
	for i, desc := range img.Manifest.Layers {
		s.layers = append(s.layers, layerSource{diffID: diffIDs[i], blob: desc, size: desc.Size, open: func(ctx context.Context) (io.ReadCloser, error) {
			return src.OpenBlob(ctx, desc)
		}})
	}
	return write(ctx, s, dest, opts)
}

// write is the pipeline both commands share: layers (a bounded number at once), then the
// config, then the manifest, so the manifest never names a blob the destination lacks.
func write(ctx context.Context, src image, dest Destination, opts []Option) (*Report, ocispec.Descriptor, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	if o.level == 0 {
		o.level = o.format.DefaultLevel()
	}
	if err := o.format.CheckLevel(o.level); err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	keep, err := keptLayers(src, o)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	start := time.Now()
	rep := &Report{Destination: dest.String(), Format: o.format, Level: o.level, Layers: make([]LayerReport, len(src.layers))}
	if o.preserve && !o.formatSet {
		rep.Format, rep.Level = "", 0 // every layer as it was: no format was applied
	}
	descs := make([]ocispec.Descriptor, len(src.layers))
	o.log.Debug("writing image", "destination", rep.Destination, "layers", len(src.layers), "format", rep.Format, "level", rep.Level)

	// A layer listed twice is made once; later copies reuse the first one's descriptor.
	first := map[digest.Digest]int{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	var dups []int
	for i, ls := range src.layers {
		if ls.diffID != "" {
			if _, ok := first[ls.diffID]; ok {
				dups = append(dups, i)
				continue
			}
			first[ls.diffID] = i
		}
		g.Go(func() error {
			lr, desc, err := writeLayer(gctx, ls, keep[i], dest, o)
			if err != nil {
				return fmt.Errorf("layer %d (%s): %w", i+1, ls.diffID, err)
			}
			rep.Layers[i], descs[i] = lr, desc
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	for _, i := range dups {
		j := first[src.layers[i].diffID]
		descs[i] = descs[j]
		rep.Layers[i] = LayerReport{Digest: descs[j].Digest, DiffID: rep.Layers[j].DiffID, Size: descs[j].Size, Status: StatusDuplicate}
		o.log.Debug("layer: duplicate, written once", "index", i+1, "diffID", rep.Layers[i].DiffID, "digest", descs[j].Digest)
	}
	mDesc, err := writeConfigAndManifest(ctx, src, rep, descs, keep, dest, o)
	if err != nil {
		return nil, ocispec.Descriptor{}, err
	}
	rep.Image = mDesc.Digest
	rep.tally()
	rep.Seconds = time.Since(start).Seconds()
	return rep, mDesc, nil
}

// writeConfigAndManifest writes the config (corrected if a layer's DiffID was not the
// config's, see configFor) and then the manifest naming descs, once every layer is written.
func writeConfigAndManifest(ctx context.Context, src image, rep *Report, descs []ocispec.Descriptor, keep []bool, dest Destination, o options) (ocispec.Descriptor, error) {
	config, err := configFor(src, rep)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	src.config = config
	mDesc, body, err := newManifest(src, descs, keep)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	cfgDesc := ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(config), Size: int64(len(config))}
	cfgStatus, err := dest.PutBlob(ctx, cfgDesc, config)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("config %s: %w", cfgDesc.Digest, err)
	}
	o.log.Debug("config", "digest", cfgDesc.Digest, "size", cfgDesc.Size, "status", cfgStatus)
	put := dest.PutManifest
	if src.child {
		put = dest.PutUntagged
	}
	if err := put(ctx, mDesc, body); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("manifest: %w", err)
	}
	o.log.Debug("manifest", "digest", mDesc.Digest, "mediaType", mDesc.MediaType, "size", mDesc.Size,
		"unchanged", src.manifestBytes != nil && mDesc.Digest == digest.FromBytes(src.manifestBytes), "byDigestOnly", src.child)
	return mDesc, nil
}

// tally sums the layers into the report's totals.
func (rep *Report) tally() {
	for _, l := range rep.Layers {
		rep.Size += l.Size
		switch l.Status {
		case StatusUploaded, StatusWritten:
			rep.Uploaded++
			rep.BytesSent += l.Size
		case StatusExisted:
			rep.Existed++
		case StatusMounted:
			rep.Mounted++
		}
	}
}

// keptLayers says which layers are copied by digest rather than recompressed: those already in
// the requested format, or all of them when digests are preserved (refused if a format was asked
// for that some layer is not in).
func keptLayers(src image, o options) ([]bool, error) {
	if o.preserve && o.allowMismatch != nil {
		return nil, fmt.Errorf("preserving digests and allowing a DiffID mismatch: a corrected config changes the digests: %w", errdefs.ErrInvalid)
	}
	keep := make([]bool, len(src.layers))
	for i, ls := range src.layers {
		if ls.blob.Digest == "" {
			if o.preserve {
				return nil, fmt.Errorf("preserving digests: only a copy can: %w", errdefs.ErrUnsupported)
			}
			continue
		}
		// A blob that is no layer tar (an attestation's in-toto statement) is copied as it is.
		keep[i] = o.format.Holds(ls.blob) || !isLayerTar(ls.blob.MediaType)
		if o.preserve && !keep[i] && o.formatSet {
			return nil, fmt.Errorf("preserving digests: layer %d (%s, %s) is not %s and would be recompressed: %w",
				i+1, ls.blob.Digest, ls.blob.MediaType, o.format, errdefs.ErrUnsupported)
		}
		keep[i] = keep[i] || o.preserve
		// Only a layer that is recompressed has its tar hashed and checked.
		keep[i] = keep[i] && (o.allowMismatch == nil || !isLayerTar(ls.blob.MediaType))
	}
	return keep, nil
}

// newManifest is the manifest to write: the source's own bytes when every layer was kept (its
// digest, and skopeo's, stay), else a new OCI manifest naming the blobs written.
func newManifest(src image, descs []ocispec.Descriptor, keep []bool) (ocispec.Descriptor, []byte, error) {
	all := src.manifestBytes != nil && registry.IsManifest(src.manifestType)
	for _, k := range keep {
		all = all && k
	}
	if all {
		return ocispec.Descriptor{MediaType: src.manifestType, Digest: digest.FromBytes(src.manifestBytes), Size: int64(len(src.manifestBytes))}, src.manifestBytes, nil
	}
	m := ocispec.Manifest{
		Versioned:   specs.Versioned{SchemaVersion: 2},
		MediaType:   ocispec.MediaTypeImageManifest,
		Config:      ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: digest.FromBytes(src.config), Size: int64(len(src.config))},
		Layers:      descs,
		Annotations: src.manifest.Annotations,
	}
	body, err := json.Marshal(m)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	return ocispec.Descriptor{MediaType: ocispec.MediaTypeImageManifest, Digest: digest.FromBytes(body), Size: int64(len(body))}, body, nil
}

// writeLayer compresses one layer into the destination, or copies it by digest when kept.
func writeLayer(ctx context.Context, ls layerSource, keep bool, dest Destination, o options) (LayerReport, ocispec.Descriptor, error) {
	start := time.Now()
	name := "layer"
	if ls.diffID != "" {
		name = digests.Short(ls.diffID)
	}
	bar := o.progress.Bar(name)
	bar.SetTotal(ls.size)
	write, how := writeLayerBar, "recompress to "+string(o.format)
	if keep {
		write, how = copyLayerBar, "copy by digest"
	}
	o.log.Debug("layer: start", "diffID", ls.diffID, "source", ls.blob.Digest, "sourceMediaType", ls.blob.MediaType, "action", how)
	lr, desc, err := write(ctx, ls, dest, o, bar)
	if err != nil {
		o.log.Debug("layer: failed", "diffID", ls.diffID, "source", ls.blob.Digest, "err", err)
		bar.Done("failed: " + err.Error())
		return lr, desc, err
	}
	lr.Seconds = time.Since(start).Seconds()
	o.log.Debug("layer: done", "diffID", lr.DiffID, "digest", lr.Digest, "status", lr.Status, "size", lr.Size,
		"inputBytes", lr.InputBytes, "seconds", lr.Seconds)
	bar.Done(lr.Status + " " + digests.Short(lr.Digest))
	return lr, desc, nil
}

func writeLayerBar(ctx context.Context, ls layerSource, dest Destination, o options, bar progress.Bar) (LayerReport, ocispec.Descriptor, error) {
	lr := LayerReport{DiffID: ls.diffID}
	rc, err := ls.open(ctx)
	if err != nil {
		return lr, ocispec.Descriptor{}, err
	}
	defer rc.Close()
	in := &progress.Reader{R: rc, Bar: bar}
	var mu sync.Mutex // the uploader may report from its own goroutines
	var sent int64
	write := func(w io.Writer) (chunked.Descriptor, error) {
		d, err := compress(ctx, in, w, o.format, o.level, o.concurrency)
		if err != nil {
			return d, err
		}
		// Read to the end (trailing frames, padding) so that a verified source checks its digest.
		if _, err := io.Copy(io.Discard, in); err != nil {
			return d, fmt.Errorf("reading the source layer: %w", err)
		}
		if ls.diffID != "" && d.DiffID != ls.diffID {
			if o.allowMismatch == nil {
				return d, fmt.Errorf("layer tar hashes to %s, the config says %s: %w", d.DiffID, ls.diffID, errdefs.ErrDigestMismatch)
			}
			o.allowMismatch(ls.blob.Digest, d.DiffID, ls.diffID)
		}
		// From here the bar follows the upload of the compressed blob (a registry's; a layout
		// reports none: it was written while compressing).
		bar.SetTotal(in.N + d.Size)
		return d, nil
	}
	d, status, err := dest.PutLayer(ctx, write, func(n int64) {
		mu.Lock()
		defer mu.Unlock()
		sent += n
		bar.Add(n)
	})
	lr.InputBytes = in.N
	if err != nil {
		return lr, ocispec.Descriptor{}, err
	}
	mu.Lock()
	if status == StatusUploaded || status == StatusWritten {
		bar.Add(d.Size - sent) // a layout is written while compressing, before the bar follows it
	} else {
		bar.Skip(d.Size)
	}
	mu.Unlock()
	lr.Digest, lr.Size, lr.Status, lr.DiffID = d.Digest, d.Size, status, d.DiffID
	return lr, ocispec.Descriptor{MediaType: d.MediaType, Digest: d.Digest, Size: d.Size, Annotations: d.Annotations}, nil
}

// copyLayerBar copies a layer's blob unchanged: nothing is read when the destination has it or
// can mount it.
func copyLayerBar(ctx context.Context, ls layerSource, dest Destination, _ options, bar progress.Bar) (LayerReport, ocispec.Descriptor, error) {
	lr := LayerReport{DiffID: ls.diffID, Digest: ls.blob.Digest, Size: ls.blob.Size}
	var in *progress.Reader // the bar follows the source blob as it is read
	open := func(ctx context.Context) (io.ReadCloser, error) {
		rc, err := ls.open(ctx)
		if err != nil {
			return nil, err
		}
		in = &progress.Reader{R: rc, Bar: bar}
		return struct {
			io.Reader
			io.Closer
		}{in, rc}, nil
	}
	status, err := dest.CopyBlob(ctx, ls.blob, open)
	lr.Status = status
	if in != nil {
		lr.InputBytes = in.N
	}
	if err != nil {
		return lr, ocispec.Descriptor{}, err
	}
	if in == nil {
		bar.Skip(ls.blob.Size)
	}
	return lr, ociLayer(ls.blob), nil
}

// exportReader is the read side of a layer export; Close waits for the exporter to stop, so no
// store read outlives Push (and its lock).
type exportReader struct {
	*io.PipeReader
	done chan struct{}
}

func (e *exportReader) Close() error {
	e.PipeReader.Close()
	<-e.done
	return nil
}
