package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/layerstore"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
)

// lazyLayers is the layerstore.Lazy of kura snapshotter --lazy (the remote path's layers) and
// kura layer-store serve --lazy (podman's lookups): layers come from lazy pulls (pull.PullLazy)
// whose fill services (pull.ServeLazy) run in this process, one per pending pull, for as long
// as the server runs (ctx).
type lazyLayers struct {
	ctx context.Context
	rf  *registryFlags
	s   *store.Store
	ls  *layerstore.Layers
	lazyConfig
	// completed is called when a pending pull completes, with its pending layers (the
	// snapshotter's Service.CompleteLazy, the layer store's ReleasePending); it returns how many
	// users of the pending mounts it could not move onto the complete layers.
	completed func(ctx context.Context, layers []digest.Digest) int

	rmu     sync.Mutex // serialises resolutions: registryFlags.pullSource is not safe for concurrent use
	mu      sync.Mutex
	known   map[string]lazyKnown         // ref NUL layer digest → what resolving it found
	serving map[digest.Digest]*lazyServe // pending pull ID → its fill service
}

// lazyConfig is what differs between the servers that use lazyLayers.
type lazyConfig struct {
	hold time.Duration // the background fetch of each pull waits this long (0: not at all)
	mode pull.LazyMode // the fill service
	refs string        // directory: <manifest hex> holds the image reference a pending pull began for
	// named: a pull is recorded under the name kura pull gives it, which stays (the layer
	// store: podman's images, as without --lazy). Otherwise under a private name removed once
	// complete (the snapshotter: its snapshots' layer mounts alone keep what runs).
	named bool
}

// lazyKnown is a resolved (ref, layer digest): later lookups of it need no registry.
type lazyKnown struct {
	id     digest.Digest // the manifest's digest: the pending pull's ID
	diffID digest.Digest
	desc   ocispec.Descriptor // the manifest's descriptor of the layer
	src    source.Source
	ref    string // the image reference containerd or podman named
	name   string // the name kura pull gives the image
}

// lazyServe is one pending pull being served; ready is closed once its placeholders are marked
// (p set) or the service failed before (err set).
type lazyServe struct {
	ready chan struct{}
	p     *lazy.Pending
	err   error
}

func newLazyLayers(ctx context.Context, rf *registryFlags, s *store.Store, ls *layerstore.Layers, cfg lazyConfig) *lazyLayers {
	return &lazyLayers{ctx: ctx, rf: rf, s: s, ls: ls, lazyConfig: cfg, completed: func(context.Context, []digest.Digest) int { return 0 },
		known: map[string]lazyKnown{}, serving: map[digest.Digest]*lazyServe{}}
}

// LookupLazy implements layerstore.Lazy.
func (l *lazyLayers) LookupLazy(ctx context.Context, ref string, dgst digest.Digest) (*layerstore.Layer, bool, error) {
	k, err := l.resolve(ctx, ref, dgst)
	if err != nil {
		return nil, false, err
	}
	l.mu.Lock()
	sv := l.serving[k.id]
	l.mu.Unlock()
	if sv == nil {
		if _, err := lazy.Open(l.s, k.id); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return nil, false, err
		} else if err != nil && l.s.HasLayer(k.diffID) {
			return l.complete(ctx, k)
		}
		sv = l.serve(k)
	}
	select {
	case <-sv.ready:
	case <-ctx.Done():
		return nil, false, ctx.Err()
	}
	if sv.err != nil {
		return nil, false, sv.err
	}
	if !slices.Contains(sv.p.Pending, k.diffID) {
		return l.complete(ctx, k) // stored before, or pulled whole (not zstd:chunked)
	}
	dir, err := l.ls.PendingDir(ctx, sv.p, k.diffID)
	l.mu.Lock()
	done := l.serving[k.id] != sv
	l.mu.Unlock()
	// Completed meanwhile: its CompleteLazy may have run. Or PendingDir failed because the pull
	// removed its pending record (the layer is then stored) before it said it was complete.
	if (done || err != nil) && l.s.HasLayer(k.diffID) {
		return l.complete(ctx, k)
	}
	if err != nil {
		return nil, false, err
	}
	return &layerstore.Layer{Desc: k.desc, DiffID: k.diffID, Diff: dir, TarSize: sv.p.TarSizes[k.diffID], Source: k.src}, true, nil
}

// complete mounts the stored layer as the remote path does, recording its use.
func (l *lazyLayers) complete(ctx context.Context, k lazyKnown) (*layerstore.Layer, bool, error) {
	dir, err := l.ls.MountLayer(ctx, "", k.diffID)
	if err != nil {
		return nil, false, err
	}
	sl, err := l.s.Layer(ctx, k.diffID)
	if err != nil {
		return nil, false, err
	}
	return &layerstore.Layer{Desc: k.desc, DiffID: k.diffID, Diff: dir, TarSize: sl.TarSize, Source: k.src}, false, nil
}

// resolve finds the manifest and the DiffID of layer dgst of ref, once per (ref, dgst).
func (l *lazyLayers) resolve(ctx context.Context, ref string, dgst digest.Digest) (lazyKnown, error) {
	key := ref + "\x00" + dgst.String()
	l.mu.Lock()
	k, ok := l.known[key]
	l.mu.Unlock()
	if ok {
		return k, nil
	}
	r, err := imageref.Parse(ref)
	if err != nil {
		return k, refError(err)
	}
	if r.Transport != imageref.Docker {
		return k, fmt.Errorf("%s is not a registry reference: %w", ref, errdefs.ErrInvalid)
	}
	l.rmu.Lock()
	defer l.rmu.Unlock()
	chosen, err := l.rf.pullSource(ctx, ref)
	if err != nil {
		return k, err
	}
	img, err := chosen.src.Resolve(ctx)
	if err != nil {
		return k, err
	}
	i := layerstore.LayerIndex(img.Manifest, dgst)
	if i < 0 || i >= len(img.Config.RootFS.DiffIDs) {
		return k, fmt.Errorf("image %s has no layer %s: %w", ref, dgst, errdefs.ErrNotFound)
	}
	k = lazyKnown{id: digest.FromBytes(img.ManifestBytes), diffID: img.Config.RootFS.DiffIDs[i], desc: img.Manifest.Layers[i],
		src: chosen.src, ref: ref, name: chosen.name}
	l.mu.Lock()
	l.known[key] = k
	l.mu.Unlock()
	return k, nil
}

// serve starts the fill service of the pending pull k.id unless it runs.
func (l *lazyLayers) serve(k lazyKnown) *lazyServe {
	l.mu.Lock()
	defer l.mu.Unlock()
	if sv := l.serving[k.id]; sv != nil {
		return sv
	}
	sv := &lazyServe{ready: make(chan struct{})}
	l.serving[k.id] = sv
	slog.Info("lazy pull served", "pull", k.id, "ref", k.ref)
	go l.run(k, sv)
	return sv
}

// run begins (or resumes) the lazy pull k.id and serves it until it completes, trying again
// after a failure (registry unreachable: the reads of files not yet filled fail meanwhile) until
// the server stops. Unless named, the pull is recorded under a private name, removed once the
// snapshots on its layers are moved onto the complete layers: as in the remote path, a layer is
// then kept exactly while a snapshot is on it.
func (l *lazyLayers) run(k lazyKnown, sv *lazyServe) {
	name := "localhost/kura-snapshotter-lazy:" + k.id.Encoded()[:16]
	if l.named {
		name = k.name
	}
	served := false // the placeholders were marked once: the lookups waiting have their answer
	ready := func() {
		if !served {
			served = true
			close(sv.ready)
		}
	}
	// A FUSE service's ServeLazy returns only once the mounts made over it are gone: the pull
	// is complete when it says so.
	var completed bool
	var once sync.Once
	complete := func() { once.Do(func() { completed = true; l.finish(k, sv, name) }) }
	defer l.forget(k.id, sv)
	for try := 0; ; try++ {
		err := l.runOnce(k, sv, name, ready, complete)
		if err == nil || completed {
			if err != nil {
				slog.Warn("lazy pull's fill service ended with an error after completing", "pull", k.id, "err", err)
			}
			break
		}
		if !served { // the lookups fail (containerd or podman downloads the layer); the next one tries again
			sv.err = err
			close(sv.ready)
			return
		}
		wait := min(time.Second<<min(try, 6), time.Minute)
		slog.Error("lazy pull failed; trying again", "pull", k.id, "in", wait, "err", err)
		select {
		case <-l.ctx.Done():
			return
		case <-time.After(wait):
		}
	}
	complete()
}

// forget drops sv from the services being run, if it still is there.
func (l *lazyLayers) forget(id digest.Digest, sv *lazyServe) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.serving[id] == sv {
		delete(l.serving, id)
	}
}

// finish is what follows a pull's completion: lookups from now on find the complete layers,
// the users of the pending mounts move onto them, and the private name goes.
func (l *lazyLayers) finish(k lazyKnown, sv *lazyServe, name string) {
	l.forget(k.id, sv)
	var pending []digest.Digest
	l.mu.Lock()
	if sv.p != nil {
		pending = sv.p.Pending
	}
	l.mu.Unlock()
	if failed := l.completed(l.ctx, pending); failed > 0 {
		// A snapshot left on its pending mount has no use of its own: the name keeps its layers
		// from gc until a restart moves it (Revive) and `kura rmi` removes the name.
		slog.Error("lazy pull complete, but snapshots are still on its pending mounts; its private name stays", "pull", k.id, "name", name, "snapshots", failed)
		return
	}
	if !l.named {
		if _, err := l.s.RemoveImage(l.ctx, name, true); err != nil {
			slog.Warn("lazy pull's private name not removed", "name", name, "err", err)
		}
	}
	os.Remove(filepath.Join(l.refs, k.id.Encoded()))
	slog.Info("lazy pull complete", "pull", k.id)
}

// runOnce is one PullLazy and ServeLazy of k.
func (l *lazyLayers) runOnce(k lazyKnown, sv *lazyServe, name string, ready, complete func()) error {
	// The pending layer mounts have containerd's or podman's overlay stacked on them.
	opts := []pull.Option{pull.WithName(name), pull.WithLogger(slog.Default()), pull.WithLazyMode(l.mode), pull.WithLazyStacked()}
	if l.named {
		opts = append(opts, pull.WithLazyTarSizes()) // the layer store's info says the tar's size
	}
	if l.hold > 0 {
		hold := make(chan struct{})
		t := time.AfterFunc(l.hold, func() { close(hold) })
		defer t.Stop()
		opts = append(opts, pull.WithBackgroundHeld(hold))
	}
	if err := l.keepRef(k); err != nil {
		return err
	}
	p, err := pull.PullLazy(l.ctx, l.s, k.src, opts...)
	if err != nil {
		return err
	}
	l.mu.Lock()
	if sv.p == nil {
		sv.p = p
	}
	l.mu.Unlock()
	opts = append(opts, pull.WithLazyComplete(func(pull.LazyMode) { complete() }))
	return pull.ServeLazy(l.ctx, l.s, k.src, p, ready, opts...)
}

// keepRef records the image reference of k's pull before the pull begins, so that a restart can
// resume it though no snapshot is left on its layers (resumeOrphans). The record is rewritten on
// each run of a pull that may be pending already, so it is replaced whole (a temp file renamed
// over it): a server killed while writing it in place left it empty or cut, and the restart could
// not resume the pull, or resumed it from a cut reference. A temp file a kill leaves has no
// digest for a name, so resumeOrphans skips it.
func (l *lazyLayers) keepRef(k lazyKnown) error {
	if k.ref == "" {
		return nil // resumed from the recorded reference
	}
	if err := os.MkdirAll(l.refs, 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(l.refs, ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name()) // nothing left to remove after the rename
	_, err = f.WriteString(k.ref)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(l.refs, k.id.Encoded()))
}

// resumeOrphans serves, at start, the pending pulls this server began before a restart: the
// snapshotter's that no lookup resumed (their snapshots were all removed: each completes, its
// private name goes, and gc frees what no snapshot uses), and every pending pull of the layer
// store (podman asks only at pull time: nothing else would resume them). A pull whose reference
// cannot be resolved is logged and left (the next lookup of that image resumes it).
func (l *lazyLayers) resumeOrphans(ctx context.Context) {
	entries, err := os.ReadDir(l.refs)
	if err != nil && !os.IsNotExist(err) {
		slog.Warn("pending lazy pulls not listed", "dir", l.refs, "err", err)
	}
	for _, e := range entries {
		id := digest.NewDigestFromEncoded(digest.SHA256, e.Name())
		b, err := os.ReadFile(filepath.Join(l.refs, e.Name()))
		if id.Validate() != nil || err != nil {
			continue
		}
		if _, err := lazy.Open(l.s, id); errors.Is(err, errdefs.ErrNotFound) {
			os.Remove(filepath.Join(l.refs, e.Name())) // completed
			continue
		}
		l.mu.Lock()
		_, ok := l.serving[id]
		l.mu.Unlock()
		if ok {
			continue
		}
		l.rmu.Lock()
		chosen, err := l.rf.pullSource(ctx, string(b))
		l.rmu.Unlock()
		if err != nil {
			slog.Warn("pending lazy pull not resumed", "pull", id, "ref", string(b), "err", err)
			continue
		}
		slog.Info("resuming a pending lazy pull no snapshot is on", "pull", id, "ref", string(b))
		l.serve(lazyKnown{id: id, src: chosen.src})
	}
}
