package pull

import (
	"context"

	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
)

// LazyTree is the fill service of WithLazyMount: the image's merged tree served by FUSE at a
// directory, each file filled on its first open. It needs no root (fusermount3).
const LazyTree LazyMode = "tree"

// WithLazyMount has ServeLazy serve the image's whole merged tree at dir (lazy.TreeServer)
// instead of serving the placeholders for composefs mounts: the way to a lazy pull without
// root, where neither composefs nor fanotify pre-content events can be had. The mount is made
// once the service starts (before ready is called), and outlives the completion: ServeLazy
// returns when it is unmounted (fusermount3 -u DIR), or when ctx ends (then it unmounts it,
// or detaches it if it is in use).
func WithLazyMount(dir string) Option { return func(o *options) { o.lazyMountDir = dir } }

// treeService mounts the merged tree when it starts.
type treeService struct {
	ctx  context.Context // the service's: fills outlive the opens that started them
	s    *store.Store
	fill lazy.FillFunc
	dir  string
	o    options
	srv  *lazy.TreeServer
}

func (svc *treeService) mode() LazyMode { return LazyTree }

func (svc *treeService) start(ctx context.Context, p *lazy.Pending, layers []*lazyLayer) error {
	tree, err := p.MergedTree(ctx, svc.s)
	if err != nil {
		return err
	}
	svc.srv, err = lazy.MountTree(svc.ctx, svc.s, tree, svc.dir, svc.fill, svc.o.fillTimeout, svc.o.log)
	return err
}

// finish has nothing to do: every object is stored, and the tree serves them from the store.
func (svc *treeService) finish(ctx context.Context) error { return nil }

func (svc *treeService) wait(ctx context.Context) error { return svc.srv.Wait(ctx) }

func (svc *treeService) close() error {
	if svc.srv == nil {
		return nil
	}
	return svc.srv.Unmount()
}
