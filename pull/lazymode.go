package pull

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
)

// LazyMode chooses how a lazy pull's placeholders are filled on first access.
type LazyMode string

// The fill services: fanotify pre-content events on the placeholders (Linux 6.14+, root), or a
// FUSE file system over each placeholder directory; auto takes fanotify when the kernel grants
// a pre-content group, FUSE otherwise.
const (
	LazyAuto     LazyMode = "auto"
	LazyFanotify LazyMode = "fanotify"
	LazyFUSE     LazyMode = "fuse"
)

// ParseLazyMode checks a mode's name (empty is auto).
func ParseLazyMode(s string) (LazyMode, error) {
	switch m := LazyMode(s); m {
	case "", LazyAuto:
		return LazyAuto, nil
	case LazyFanotify, LazyFUSE:
		return m, nil
	}
	return "", fmt.Errorf("lazy mode %q: want auto, fanotify or fuse: %w", s, errdefs.ErrInvalid)
}

// WithLazyMode chooses the fill service of ServeLazy (default LazyAuto).
func WithLazyMode(m LazyMode) Option { return func(o *options) { o.lazyMode = m } }

// WithLazyComplete has ServeLazy call fn, with the mode it served in, once the image is recorded
// and the pending pull removed: in FUSE mode ServeLazy goes on serving the mounts made over it
// until they are unmounted.
func WithLazyComplete(fn func(LazyMode)) Option { return func(o *options) { o.lazyComplete = fn } }

// WithLazyStacked says that the mounts made over the placeholders will have another overlay
// stacked on them (a layer store's pending layer mounts, under podman's overlay): a FUSE fill
// service then answers reads itself instead of passing the stored files to the kernel, as FUSE
// passthrough makes its mount one more level of file system stacking, and overlayfs allows
// two (the pending composefs overlay over passthrough FUSE leaves none for podman's).
func WithLazyStacked() Option { return func(o *options) { o.lazyStacked = true } }

// WithLazyTarSizes makes a lazy pull fetch each layer's tar-split with its TOC, before the image
// is mountable, unless a stored predecessor predicts it, so that the pending record has the
// size of each layer's tar: what a layer store's info (diff-size) says before completion. By
// default the tar-split waits for the import that completes the layer.
func WithLazyTarSizes() Option { return func(o *options) { o.lazyTarSizes = true } }

// fillService is what ServeLazy needs of a fill service: serve the placeholders, make them
// independent of the pending pull once every layer is stored (finish), outlive it while
// mounts need it (wait), and end.
type fillService interface {
	mode() LazyMode
	start(ctx context.Context, p *lazy.Pending, layers []*lazyLayer) error
	finish(ctx context.Context) error
	wait(ctx context.Context) error
	close() error
}

// newFiller is lazy.NewFiller; tests of auto's fallback replace it (this kernel grants
// pre-content events).
var newFiller = lazy.NewFiller

// newFillService makes the service of mode o.lazyMode; auto falls back to FUSE only when the
// kernel refuses pre-content events (ErrUnsupported). WithLazyMount's tree service replaces
// them all: it fills on open itself.
func newFillService(ctx context.Context, s *store.Store, fill lazy.FillFunc, o options) (fillService, error) {
	if o.lazyMountDir != "" {
		return &treeService{ctx: ctx, s: s, fill: fill, dir: o.lazyMountDir, o: o}, nil
	}
	if o.lazyMode != LazyFUSE {
		f, err := newFiller(s, fill, o.fillTimeout, o.log)
		if err == nil {
			return newFanotifyService(ctx, f), nil
		}
		if o.lazyMode == LazyFanotify || !errors.Is(err, errdefs.ErrUnsupported) {
			return nil, err
		}
		o.log.Info("lazy: no fanotify pre-content events; serving placeholders with FUSE", "err", err)
	}
	srv := lazy.NewFUSEServer(ctx, s, fill, o.fillTimeout, o.log)
	if o.lazyStacked {
		srv.DisablePassthrough()
	}
	return &fuseService{srv: srv}, nil
}

// fanotifyService runs the Filler's event loop from start to close.
type fanotifyService struct {
	f      *lazy.Filler
	stop   context.CancelFunc
	runErr chan error
}

func newFanotifyService(ctx context.Context, f *lazy.Filler) *fanotifyService {
	runCtx, stop := context.WithCancel(ctx)
	svc := &fanotifyService{f: f, stop: stop, runErr: make(chan error, 1)}
	go func() { svc.runErr <- f.Run(runCtx) }()
	return svc
}

func (svc *fanotifyService) mode() LazyMode { return LazyFanotify }

func (svc *fanotifyService) start(ctx context.Context, p *lazy.Pending, layers []*lazyLayer) error {
	for _, l := range layers {
		// A FUSE service that died may have left its mount over the placeholders.
		if err := lazy.DetachMounts(p.DataDir(l.diffID)); err != nil {
			return err
		}
		if err := svc.f.Watch(ctx, p, l.diffID, layerfs.Objects(l.part.Layer.Entries)); err != nil {
			return err
		}
	}
	return nil
}

func (svc *fanotifyService) finish(ctx context.Context) error { return svc.f.FillAll(ctx) }

func (svc *fanotifyService) wait(ctx context.Context) error { return nil }

func (svc *fanotifyService) close() error {
	svc.stop()
	err := <-svc.runErr
	if cerr := svc.f.Close(); !errors.Is(cerr, os.ErrClosed) { // Run closed the group at its end
		err = errors.Join(err, cerr)
	}
	return err
}

// fuseService covers each pending layer's placeholder directory with the FUSE server.
type fuseService struct {
	srv *lazy.FUSEServer
}

func (svc *fuseService) mode() LazyMode { return LazyFUSE }

func (svc *fuseService) start(ctx context.Context, p *lazy.Pending, layers []*lazyLayer) error {
	for _, l := range layers {
		if err := svc.srv.Serve(p, l.diffID, l.part.Layer.Entries); err != nil {
			return err
		}
	}
	return nil
}

// finish detaches the FUSE mounts from the placeholder directories: every object is stored,
// and the server goes on answering the mounts made over it from the store.
func (svc *fuseService) finish(ctx context.Context) error {
	return svc.srv.Release()
}

func (svc *fuseService) wait(ctx context.Context) error { return svc.srv.Wait(ctx) }

// close ends the server as a crash would when it still serves (mounts over it answer ENOTCONN).
func (svc *fuseService) close() error { return svc.srv.Kill() }
