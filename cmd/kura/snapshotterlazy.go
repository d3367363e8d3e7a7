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

// lazyLayers is kura snapshotter --lazy's snapshotter.Lazy: the remote path's layers come from
// lazy pulls (pull.PullLazy) whose fill services (pull.ServeLazy) run in this process, one per
// pending pull, for as long as the server runs (ctx).
type lazyLayers struct {
	ctx  context.Context
	rf   *registryFlags
	s    *store.Store
	ls   *layerstore.Layers
	hold time.Duration // the background fetch of each pull waits this long (0: not at all)
	refs string        // directory: <manifest hex> holds the image reference a pending pull began for
	// completed is called when a pending pull completes (Service.CompleteLazy); it returns how
	// many snapshots it could not move onto their complete layers.
	completed func(context.Context) int

	rmu     sync.Mutex // serialises resolutions: registryFlags.pullSource is not safe for concurrent use
	mu      sync.Mutex
	known   map[string]lazyKnown         // ref NUL layer digest → what resolving it found
	serving map[digest.Digest]*lazyServe // pending pull ID → its fill service
}

// lazyKnown is a resolved (ref, layer digest): later lookups of it need no registry.
type lazyKnown struct {
	id     digest.Digest // the manifest's digest: the pending pull's ID
	diffID digest.Digest
	src    source.Source
	ref    string // the image reference containerd named
}

// lazyServe is one pending pull being served; ready is closed once its placeholders are marked
// (p set) or the service failed before (err set).
type lazyServe struct {
	ready chan struct{}
	p     *lazy.Pending
	err   error
}

func newLazyLayers(ctx context.Context, rf *registryFlags, s *store.Store, ls *layerstore.Layers, hold time.Duration, refs string) *lazyLayers {
	return &lazyLayers{ctx: ctx, rf: rf, s: s, ls: ls, hold: hold, refs: refs, completed: func(context.Context) int { return 0 },
		known: map[string]lazyKnown{}, serving: map[digest.Digest]*lazyServe{}}
}

// LookupLazy implements snapshotter.Lazy.
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
	if done && l.s.HasLayer(k.diffID) { // completed meanwhile: its CompleteLazy may have run
		return l.complete(ctx, k)
	}
	if err != nil {
		return nil, false, err
	}
	return &layerstore.Layer{DiffID: k.diffID, Diff: dir}, true, nil
}

// complete mounts the stored layer as the remote path does, recording its use.
func (l *lazyLayers) complete(ctx context.Context, k lazyKnown) (*layerstore.Layer, bool, error) {
	dir, err := l.ls.MountLayer(ctx, "", k.diffID)
	if err != nil {
		return nil, false, err
	}
	return &layerstore.Layer{DiffID: k.diffID, Diff: dir}, false, nil
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
	i := slices.IndexFunc(img.Manifest.Layers, func(d ocispec.Descriptor) bool { return d.Digest == dgst })
	if i < 0 || i >= len(img.Config.RootFS.DiffIDs) {
		return k, fmt.Errorf("image %s has no layer %s: %w", ref, dgst, errdefs.ErrNotFound)
	}
	k = lazyKnown{id: digest.FromBytes(img.ManifestBytes), diffID: img.Config.RootFS.DiffIDs[i], src: chosen.src, ref: ref}
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
	go l.run(k, sv)
	return sv
}

// run begins (or resumes) the lazy pull k.id and serves it until it completes, trying again
// after a failure (registry unreachable: the reads of files not yet filled fail meanwhile) until
// the server stops. The pull is recorded under a private name, removed once the snapshots on
// its layers are moved onto the complete layers: as in the remote path, a layer is then kept
// exactly while a snapshot is on it.
func (l *lazyLayers) run(k lazyKnown, sv *lazyServe) {
	name := "localhost/kura-snapshotter-lazy:" + k.id.Encoded()[:16]
	served := false // the placeholders were marked once: the lookups waiting have their answer
	ready := func() {
		if !served {
			served = true
			close(sv.ready)
		}
	}
	done := func() {
		l.mu.Lock()
		delete(l.serving, k.id)
		l.mu.Unlock()
	}
	defer done()
	for try := 0; ; try++ {
		err := l.runOnce(k, sv, name, ready)
		if err == nil {
			break
		}
		if !served { // the lookups fail (containerd downloads the layer); the next one tries again
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
	done() // lookups from now on find the complete layers
	if failed := l.completed(l.ctx); failed > 0 {
		// A snapshot left on its pending mount has no use of its own: the name keeps its layers
		// from gc until a restart moves it (Revive) and `kura rmi` removes the name.
		slog.Error("lazy pull complete, but snapshots are still on its pending mounts; its private name stays", "pull", k.id, "name", name, "snapshots", failed)
		return
	}
	if _, err := l.s.RemoveImage(l.ctx, name, true); err != nil {
		slog.Warn("lazy pull's private name not removed", "name", name, "err", err)
	}
	os.Remove(filepath.Join(l.refs, k.id.Encoded()))
	slog.Info("lazy pull complete", "pull", k.id)
}

// runOnce is one PullLazy and ServeLazy of k.
func (l *lazyLayers) runOnce(k lazyKnown, sv *lazyServe, name string, ready func()) error {
	// fanotify only: the FUSE fill service's mounts and lifetime are not made for the pending
	// layer mounts this snapshotter builds (docs/snapshotter.md).
	opts := []pull.Option{pull.WithName(name), pull.WithLogger(slog.Default()), pull.WithLazyMode(pull.LazyFanotify)}
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
	return pull.ServeLazy(l.ctx, l.s, k.src, p, ready, opts...)
}

// keepRef records the image reference of k's pull before the pull begins, so that a restart can
// resume it though no snapshot is left on its layers (resumeOrphans).
func (l *lazyLayers) keepRef(k lazyKnown) error {
	if k.ref == "" {
		return nil // resumed from the recorded reference
	}
	if err := os.MkdirAll(l.refs, 0o700); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(l.refs, k.id.Encoded()), []byte(k.ref), 0o600)
}

// resumeOrphans serves the pending pulls this snapshotter began that no lookup resumed at start
// (their snapshots were all removed before a restart): each completes, its private name goes,
// and gc frees what no snapshot uses. A pull whose reference cannot be resolved is logged and
// left (the next lookup of that image resumes it).
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
