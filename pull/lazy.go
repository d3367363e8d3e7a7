package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/vbatts/tar-split/tar/storage"
	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/lazy/lazymount"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// PullLazy begins a lazy pull: layers that are not zstd:chunked are pulled as usual; of the
// others only the metadata (TOC, tar-split), the start-up baseline (lazybaseline.go) and the
// start-up program (lazyprogram.go) are fetched, and every other missing object gets an empty
// placeholder. It returns the pending
// pull, which can be mounted at once (lazy.Mount) and which ServeLazy completes. With
// WithLazyMount neither placeholders nor its composefs image are made. A pending pull
// of the same manifest is resumed as it is. It holds the store's shared lock while it runs.
func PullLazy(ctx context.Context, s *store.Store, src source.Source, opts ...Option) (*lazy.Pending, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	img, err := src.Resolve(ctx)
	if err != nil {
		return nil, err
	}
	name, diffIDs, err := nameAndDiffIDs(o, img)
	if err != nil {
		return nil, err
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	o.budget = newMetaBudget(o.metaBudget)
	id := digest.FromBytes(img.ManifestBytes)
	if p, err := lazy.Open(s, id); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return p, err
	}
	rec := lazy.Record{Name: name, Manifest: img.ManifestBytes, Config: img.ConfigBytes}
	if opt := sourceOf(src, img); len(opt) > 0 {
		var si store.Image
		opt[0](&si)
		rec.Source = si.Source
	}
	start := time.Now()
	prev := o.predecessors(ctx, s, name, len(diffIDs))
	tocs, layers, st, err := lazyLayers(ctx, s, src, img, diffIDs, prev, o)
	if err != nil {
		return nil, err
	}
	o.log.Debug("lazy: metadata fetched", "layers", len(layers), "seconds", time.Since(start).Seconds())
	rec.TarSizes = map[digest.Digest]int64{}
	for _, l := range layers {
		rec.Pending = append(rec.Pending, l.diffID)
		if ts, ok := l.part.TarSplit.(*layer.FetchedTarSplit); ok {
			rec.TarSizes[l.diffID] = tarSize(ts.Entries)
		}
	}
	p, err := lazy.Create(s, id, rec, tocs)
	if err != nil {
		return nil, err
	}
	// The first files are fetched beside the placeholders and the composefs image, which need
	// none of them: the image inlines no file, and the first files' objects get no placeholder.
	// They are a guess made for speed: a failure is logged, and the service makes the missing
	// placeholders before it serves.
	var g errgroup.Group
	first, firstObjs := firstFetches(layers, st)
	g.Go(func() error {
		fctx, cancel := context.WithTimeout(ctx, firstFilesTimeout)
		defer cancel()
		if err := fetchFirstFiles(fctx, s, src, first, o); err != nil {
			o.log.Warn("lazy: the start-up files were not fetched first; they are filled on demand", "err", err)
			return nil
		}
		st.fetchLoads(fctx, s, func(l *lazyLayer) layer.RangeFetcher { return rangeFetcher{src: src, desc: l.desc, lr: &LayerReport{}} }, o.log)
		return nil
	})
	if o.lazyMountDir != "" {
		// The tree mount never reads placeholders nor the composefs image, and making the
		// placeholders is most of a start-up's time; a service of another mode makes the
		// missing ones before it serves them, and kura mount builds a missing image.
		g.Wait()
		fetchedMeta.Store(metaKey{s.Root(), id}, &pulledMeta{layers: layers, ix: st.ix})
		o.log.Debug("lazy: pending pull recorded; no placeholders for a tree mount", "seconds", time.Since(start).Seconds())
		return p, nil
	}
	// The composefs image is built beside the placeholders (CPU against the file system's
	// creates), so that kura mount only mounts it.
	known := map[digest.Digest][]layerfs.Entry{}
	for _, l := range layers {
		known[l.diffID] = l.part.Layer.Entries // decoded with the TOC: not again from the record
	}
	g.Go(func() error { return lazymount.BuildImage(ctx, s, p, known) })
	for _, l := range layers {
		objs := slices.DeleteFunc(layerfs.Objects(l.part.Layer.Entries), func(d digest.Digest) bool { return firstObjs[d] })
		if err := p.MakePlaceholders(s, l.diffID, objs); err != nil {
			g.Wait()
			return nil, err
		}
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	fetchedMeta.Store(metaKey{s.Root(), id}, &pulledMeta{layers: layers, ix: st.ix})
	o.log.Debug("lazy: pending pull recorded, placeholders and composefs image made", "seconds", time.Since(start).Seconds())
	return p, nil
}

// lazyLayers fetches the metadata of each zstd:chunked layer the store lacks, and pulls the
// other layers whole. It returns the TOC frames of the lazy ones and the layers themselves,
// lowest first, with the image's start-up program found in them.
func lazyLayers(ctx context.Context, s *store.Store, src source.Source, img *source.Image, diffIDs, prev []digest.Digest, o options) (map[digest.Digest][]byte, []*lazyLayer, *startup, error) {
	var mu sync.Mutex
	found := map[digest.Digest]*lazyLayer{}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for i, desc := range img.Manifest.Layers {
		diffID := diffIDs[i]
		if s.HasLayer(diffID) {
			continue
		}
		g.Go(func() error {
			part, err := lazyMetadata(gctx, s, src, desc, prev[i], o)
			if errors.Is(err, errdefs.ErrNeedFull) {
				_, err = pullLayer(gctx, s, src, desc, diffID, "", o)
				return err
			}
			if err != nil {
				return fmt.Errorf("layer %s: %w", desc.Digest, err)
			}
			mu.Lock()
			found[diffID] = newLazyLayer(diffID, desc, part)
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, nil, nil, err
	}
	var layers []*lazyLayer // lowest first
	tocs := map[digest.Digest][]byte{}
	for _, d := range diffIDs {
		if l, ok := found[d]; ok && tocs[d] == nil {
			layers = append(layers, l)
			tocs[d] = l.part.TOCZst
		}
	}
	return tocs, layers, newStartup(img.ConfigBytes, layers), nil
}

// firstFetches lists, per layer, the files a lazy pull stores before it is mountable: the
// start-up baseline and the start-up program; and their objects.
func firstFetches(layers []*lazyLayer, st *startup) (map[*lazyLayer][]chunked.File, map[digest.Digest]bool) {
	files, objs := map[*lazyLayer][]chunked.File{}, map[digest.Digest]bool{}
	for _, l := range layers {
		fs := firstFiles(l.part.Layer.Files)
		if f, ok := st.program(l); ok {
			fs = append(fs, f)
		}
		for _, f := range fs {
			objs[f.Entry.Digest] = true
		}
		files[l] = fs
	}
	return files, objs
}

// fetchFirstFiles stores the first files of each layer (firstFetches), the layers side by side.
func fetchFirstFiles(ctx context.Context, s *store.Store, src source.Source, first map[*lazyLayer][]chunked.File, o options) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.jobs)
	for l, files := range first {
		g.Go(func() error {
			_, err := layer.FetchFiles(gctx, s, files, rangeFetcher{src: src, desc: l.desc, lr: &LayerReport{}})
			if err != nil {
				return fmt.Errorf("layer %s: %w", l.desc.Digest, err)
			}
			return nil
		})
	}
	return g.Wait()
}

// lazyMetadata fetches and parses a layer's TOC; ErrNeedFull when the layer cannot be pulled
// file by file (not zstd:chunked, or the old format, whose DiffID cannot be checked). The
// tar-split waits for the import that completes the layer, after the start-up (predicted from
// stored layer prev's when there is one, fetched otherwise): nothing before needs it.
func lazyMetadata(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, prev digest.Digest, o options) (layer.Partial, error) {
	if !chunked.IsChunked(desc.Annotations) {
		return layer.Partial{}, needFull("not zstd:chunked")
	}
	lr := &LayerReport{}
	bound := chunked.WithMaxMetadataSize(o.maxMeta)
	loc, err := locate(ctx, src, desc, lr, bound)
	if err != nil {
		return layer.Partial{}, err
	}
	if loc.TarSplit.Length == 0 {
		return layer.Partial{}, needFull("zstd:chunked layer in the old format (no tar-split)")
	}
	if o.lazyTarSizes {
		return fetchMetadata(ctx, s, src, desc, loc, prev, lr, bound)
	}
	return fetchTOCPredicted(ctx, s, src, desc, loc, prev, lr, bound)
}

// tarSize is the size of the tar a tar-split rebuilds: its raw segments (headers, padding, the
// end blocks) and its files' contents.
func tarSize(entries []storage.Entry) int64 {
	var n int64
	for i := range entries {
		switch e := &entries[i]; e.Type {
		case storage.SegmentType:
			n += int64(len(e.Payload))
		case storage.FileType:
			n += e.Size
		}
	}
	return n
}

// fetchedMeta keeps the metadata (TOC, tar-split) PullLazy fetched and verified, per store
// and pending pull, for the ServeLazy of the same process: without it the fill service fetched
// both again before the first fill, and indexed the image's files again for the libraries of
// the first program filled. A restarted service, in a new process, fetches them.
var fetchedMeta sync.Map // metaKey → *pulledMeta

type metaKey struct {
	root string
	id   digest.Digest
}

// pulledMeta is what PullLazy keeps for ServeLazy: its pending layers, lowest first, and the
// index of their files.
type pulledMeta struct {
	layers []*lazyLayer
	ix     *imageFiles
}

// takeFetchedMeta returns (and forgets) what PullLazy fetched for pending pull id of s, or nil.
func takeFetchedMeta(s *store.Store, id digest.Digest) *pulledMeta {
	v, ok := fetchedMeta.LoadAndDelete(metaKey{s.Root(), id})
	if !ok {
		return nil
	}
	return v.(*pulledMeta)
}
