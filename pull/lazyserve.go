package pull

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// WithFillTimeout bounds one on-demand fill of a lazy pull (default lazy.DefaultFillTimeout):
// past it the reader's access fails with EIO.
func WithFillTimeout(d time.Duration) Option { return func(o *options) { o.fillTimeout = d } }

// WithBackgroundHeld makes ServeLazy answer reads only until hold is closed, and only then fetch
// the rest of the layers: for tests of the on-demand path, and for a caller that wants the
// network for start-up reads first.
func WithBackgroundHeld(hold <-chan struct{}) Option { return func(o *options) { o.lazyHold = hold } }

// lazyLayer is one pending layer while it is served.
type lazyLayer struct {
	diffID digest.Digest
	desc   ocispec.Descriptor
	part   layer.Partial
	files  map[digest.Digest]chunked.File // object → the first file holding it
	ahead  *readahead
}

// ServeLazy completes a pending lazy pull: it answers the first open (or read) of each of its
// placeholders (fetching that file's frames, verifying, storing and copying the object in),
// while it fetches every layer's remaining files in the background with ImportPartial, which
// verifies the DiffID and records the layer. Then it fills the placeholders left, records the
// image and its ref, and removes the pending pull. ready is called once the placeholders are
// served. It holds the store's shared lock only while it writes to the store (see locked). The
// fill service is fanotify's or FUSE's (WithLazyMode); a FUSE service then goes on serving the
// mounts made over it until they are unmounted or ctx ends.
func ServeLazy(ctx context.Context, s *store.Store, src source.Source, p *lazy.Pending, ready func(), opts ...Option) (err error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	release, err := p.LockServe()
	if err != nil {
		takeFetchedMeta(s, p.ID) // another service has the pull: a long-running caller must not keep it
		return err
	}
	defer release()
	start := time.Now()
	layers, ix, err := pendingLayers(ctx, s, src, p, o) // from the registry: no store work
	if err != nil {
		return err
	}
	o.log.Debug("lazy: metadata fetched for serving", "layers", len(layers), "seconds", time.Since(start).Seconds())
	byDiffID := map[digest.Digest]*lazyLayer{}
	for _, l := range layers {
		byDiffID[l.diffID] = l
	}
	fetcher := func(l *lazyLayer) layer.RangeFetcher { return rangeFetcher{src: src, desc: l.desc, lr: &LayerReport{}} }
	act, rec := newFillActivity(time.Now, time.After), &profileRecorder{}
	fills := &onDemand{s: s, layers: byDiffID, ordered: layers, libs: ix, fetcher: fetcher, act: act, rec: rec, log: o.log,
		inflight: map[digest.Digest]*fetchedFill{}}
	startupOver := useProfile(ctx, s, p, layers, fetcher, act, rec, o)
	svc, err := newFillService(ctx, s, fills.fill, o)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := svc.close(); err == nil {
			err = cerr
		}
	}()
	err = svc.start(ctx, p, layers)
	o.log.Debug("lazy: placeholders served", "mode", svc.mode(), "seconds", time.Since(start).Seconds())
	if err == nil {
		if ready != nil {
			ready()
		}
		err = completeLazy(ctx, s, src, p, layers, svc, startupOver, act.waitIdle, o)
	}
	if err == nil {
		if o.lazyComplete != nil {
			o.lazyComplete(svc.mode())
		}
		err = svc.wait(ctx)
	}
	return err
}

// locked runs fn under the store's shared lock. The fill service takes it for each step that
// writes to the store (a fill, a layer's import, the image and its ref), not for the whole pull:
// a gc asked meanwhile waits at the gate for one step, and holds back other pulls only while it
// runs, not for as long as the lazy pull does. Between steps gc keeps what the pending pull needs
// (store/gclazy.go: its stored layers and every object its TOCs name), and placeholders live
// outside objects/.
func locked(ctx context.Context, s *store.Store, fn func() error) error {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return err
	}
	defer unlock()
	return fn()
}

// profileFetchTimeout bounds the fetch of a start-up profile's files before the placeholders
// are served, and firstFilesTimeout the first files' (baseline, start-up program and what it
// loads) before a lazy pull is mountable: past them the rest are filled on demand.
const (
	profileFetchTimeout = 30 * time.Second
	firstFilesTimeout   = 30 * time.Second
)

// useProfile fetches the files of the pull's start-up profile, if there is one, and returns
// what completeLazy calls to wait for the start-up window: it then saves the profile with the
// paths filled on demand that it lacked.
func useProfile(ctx context.Context, s *store.Store, p *lazy.Pending, layers []*lazyLayer, fetcher sourceFetch, act *fillActivity, rec *profileRecorder, o options) func(context.Context) error {
	repo := profileRepo(p.Source, p.Name)
	profile := loadProfile(s, repo, o.log)
	pctx, cancel := context.WithTimeout(ctx, profileFetchTimeout)
	if err := locked(pctx, s, func() error { prefetchProfile(pctx, s, fetcher, layers, profile, o.log); return nil }); err != nil {
		o.log.Warn("lazy: start-up profile's files not fetched", "err", err)
	}
	cancel()
	return func(ctx context.Context) error {
		err := waitStartup(ctx, act, o)
		if merged, added := rec.stop(profile); added > 0 && err == nil {
			if serr := saveProfile(s, repo, merged); serr != nil {
				o.log.Warn("lazy: start-up profile not saved", "repository", repo, "err", serr)
			}
		}
		return err
	}
}

// waitStartup waits until the hold is released (WithBackgroundHeld) or, without one, until the
// start-up window ends (see StartupWindow).
func waitStartup(ctx context.Context, act *fillActivity, o options) error {
	if o.lazyHold != nil {
		select {
		case <-o.lazyHold:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	capped, err := act.waitQuiet(ctx, o.startup)
	o.log.Debug("lazy: start-up window over; fetching the rest", "capped", capped)
	return err
}

// completeLazy waits for the start-up window, then fetches the rest of each layer and records
// it, fills what is left, records the image and its ref, and removes the pending pull. The
// fetch of the rest yields to on-demand fills (idle; see bulkFetcher).
func completeLazy(ctx context.Context, s *store.Store, src source.Source, p *lazy.Pending, layers []*lazyLayer, svc fillService, startupOver, idle func(context.Context) error, o options) error {
	if err := startupOver(ctx); err != nil {
		return err
	}
	for _, l := range layers {
		if s.HasLayer(l.diffID) {
			continue
		}
		err := locked(ctx, s, func() error {
			inner := func() layer.RangeFetcher { return rangeFetcher{src: src, desc: l.desc, lr: &LayerReport{}} }
			bulk := bulkFetcher{inner: inner, idle: idle, limits: o.bulk}
			_, err := layer.ImportPartial(ctx, s, l.part, l.diffID, bulk, layer.PartialOptions{Log: o.log.With("layer", l.desc.Digest)})
			return err
		})
		if err != nil {
			return fmt.Errorf("layer %s: %w", l.desc.Digest, explainDiffID(l.desc, err, true))
		}
	}
	if err := svc.finish(ctx); err != nil {
		return err
	}
	return locked(ctx, s, func() error {
		img, err := s.PutImage(ctx, p.Manifest, p.Config, store.WithSource(p.Source))
		if err != nil {
			return err
		}
		if err := s.SetRef(ctx, p.Name, img.ID); err != nil {
			return err
		}
		return p.Remove(ctx)
	})
}

// newLazyLayer is a pending layer as it is served, from its parsed metadata.
func newLazyLayer(diffID digest.Digest, desc ocispec.Descriptor, part layer.Partial) *lazyLayer {
	l := &lazyLayer{diffID: diffID, desc: desc, part: part, files: map[digest.Digest]chunked.File{},
		ahead: newReadahead(part.Layer.Files)}
	for _, f := range part.Layer.Files {
		if _, ok := l.files[f.Entry.Digest]; !ok {
			l.files[f.Entry.Digest] = f
		}
	}
	return l
}

// pendingLayers fetches the metadata of each pending layer again (a restarted service has only
// the record), checked against the manifest the pending pull recorded, unless PullLazy of this
// process kept it; then it also returns the index of the layers' files (nil otherwise).
func pendingLayers(ctx context.Context, s *store.Store, src source.Source, p *lazy.Pending, o options) ([]*lazyLayer, *imageFiles, error) {
	var m ocispec.Manifest
	var c ocispec.Image
	if err := json.Unmarshal(p.Manifest, &m); err != nil {
		return nil, nil, fmt.Errorf("lazy pull %s: manifest: %v: %w", p.ID, err, errdefs.ErrInvalid)
	}
	if err := json.Unmarshal(p.Config, &c); err != nil || len(c.RootFS.DiffIDs) != len(m.Layers) {
		return nil, nil, fmt.Errorf("lazy pull %s: config does not list one DiffID per layer: %w", p.ID, errdefs.ErrInvalid)
	}
	if known := takeFetchedMeta(s, p.ID); known != nil && slices.EqualFunc(known.layers, p.Pending, func(l *lazyLayer, d digest.Digest) bool { return l.diffID == d }) {
		return known.layers, known.ix, nil
	}
	prev := o.predecessors(ctx, s, p.Name, len(m.Layers))
	var out []*lazyLayer
	for _, d := range p.Pending {
		i := slices.Index(c.RootFS.DiffIDs, d)
		if i < 0 {
			return nil, nil, fmt.Errorf("lazy pull %s: pending layer %s is not in the config: %w", p.ID, d, errdefs.ErrInvalid)
		}
		part, err := lazyMetadata(ctx, s, src, m.Layers[i], prev[i], o)
		if err != nil {
			return nil, nil, fmt.Errorf("layer %s: %w", m.Layers[i].Digest, err)
		}
		out = append(out, newLazyLayer(d, m.Layers[i], part))
	}
	return out, nil, nil
}
