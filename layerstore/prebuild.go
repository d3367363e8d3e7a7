package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/storeimage"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/store"
)

// EntriesResolver is a Resolver whose pulls hand each layer's entries over as soon as they are
// parsed (pull.WithLayerEntries). With composefs diffs the layer store then builds a layer's
// composefs image beside the pull, while the pull fetches the files the store lacks and checks
// the DiffID, and not after it: only the mount is left when the lookup answers, and it is made
// before podman's next use of diff (its container's overlay) asks for it.
type EntriesResolver interface {
	Resolver
	ResolveWithEntries(ctx context.Context, ref string, fn pull.LayerEntriesFunc) (Pulled, error)
}

// prebuild is one layer's composefs image being built from the entries a pull handed over.
type prebuild struct {
	verified chan struct{} // closed by the pull's done: recorded is set then
	recorded bool
	done     chan struct{} // closed once the image is in place, or given up
}

// layerEntries is the pull.LayerEntriesFunc of the layer store's pulls: unless the layer's
// image is there or being built, it starts building it from entries.
func (l *Layers) layerEntries(diffID digest.Digest, entries []layerfs.Entry) func(recorded bool) {
	if _, err := os.Stat(l.imagePath(diffID)); err == nil {
		return nil
	}
	l.pmu.Lock()
	if _, ok := l.prebuilds[diffID]; ok {
		l.pmu.Unlock()
		return nil
	}
	pb := &prebuild{verified: make(chan struct{}), done: make(chan struct{})}
	l.prebuilds[diffID] = pb
	l.pmu.Unlock()
	go l.runPrebuild(diffID, entries, pb)
	var once sync.Once
	return func(recorded bool) {
		once.Do(func() { pb.recorded = recorded; close(pb.verified) })
	}
}

// runPrebuild builds the image into a temp file and puts it in place only once the pull has
// recorded the layer with these very entries: an image made from entries that fail
// verification is never seen. It holds the store's shared lock for the objects it inlines.
func (l *Layers) runPrebuild(diffID digest.Digest, entries []layerfs.Entry, pb *prebuild) {
	defer func() {
		l.pmu.Lock()
		delete(l.prebuilds, diffID)
		l.pmu.Unlock()
		close(pb.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultLookupTimeout)
	defer cancel()
	start := time.Now()
	unlock, err := l.s.RLock(ctx)
	if err == nil {
		defer unlock()
		st := &entriesStore{Store: storeimage.WithoutDigests(l.s), diffID: diffID, entries: entries, pb: pb}
		err = l.writeLayerImage(ctx, st, diffID, entries, func() error { return pb.wait(ctx) })
	}
	if err != nil {
		l.opts.Log.Warn("building a layer's composefs image beside its pull failed; it is built when mounted", "diffID", diffID, "err", err)
		return
	}
	l.opts.Log.Info("layer image built beside the pull", "diffID", diffID, "took", time.Since(start))
}

// errNotRecorded: the pull did not record the layer with the entries an image was built from.
var errNotRecorded = errors.New("the pull did not record the layer with the entries handed over")

// wait waits for the pull's verdict on the entries.
func (pb *prebuild) wait(ctx context.Context) error {
	select {
	case <-pb.verified:
	case <-ctx.Done():
		return ctx.Err()
	}
	if !pb.recorded {
		return errNotRecorded
	}
	return nil
}

// awaitPrebuild waits until an image being built beside a pull of diffID is in place or given
// up, so that a mount neither builds it a second time nor races the rename.
func (l *Layers) awaitPrebuild(ctx context.Context, diffID digest.Digest) error {
	l.pmu.Lock()
	pb := l.prebuilds[diffID]
	l.pmu.Unlock()
	if pb == nil {
		return nil
	}
	select {
	case <-pb.done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("layer store: waiting for the composefs image of %s: %w", diffID, ctx.Err())
	}
}

// entriesStore is the store as a prebuild reads it: the layer's entries are the ones the pull
// parsed, and an object the store lacks yet (a small file the pull is still fetching, to be
// inlined) is opened once the pull has recorded the layer, which commits its objects first.
type entriesStore struct {
	storeimage.Store
	diffID  digest.Digest
	entries []layerfs.Entry
	pb      *prebuild // nil: entries are the stored layer's, every object is there
}

func (e *entriesStore) LayerEntries(ctx context.Context, diffID digest.Digest) ([]layerfs.Entry, error) {
	if diffID != e.diffID {
		return e.Store.LayerEntries(ctx, diffID)
	}
	return e.entries, nil
}

func (e *entriesStore) Open(ctx context.Context, d digest.Digest) (*os.File, error) {
	f, err := e.Store.Open(ctx, d)
	if err == nil || e.pb == nil {
		return f, err
	}
	if werr := e.pb.wait(ctx); werr != nil {
		return nil, errors.Join(err, werr)
	}
	return e.Store.Open(ctx, d)
}

// OmitDigests: the per-layer images carry no fs-verity digests (see layerImage).
func (e *entriesStore) OmitDigests() bool { return true }

// imagePath is where the composefs image of layer diffID is kept.
func (l *Layers) imagePath(diffID digest.Digest) string {
	return filepath.Join(l.opts.State, dirComposefs, diffID.Encoded()+".cfs")
}

// writeLayerImage builds the composefs image of one layer from its entries into a temp file
// beside its place, and renames it there once ready() allows (nil: at once). A server killed
// meanwhile leaves only the temp file, which the next one removes (removeTemps).
func (l *Layers) writeLayerImage(ctx context.Context, st storeimage.Store, diffID digest.Digest, entries []layerfs.Entry, ready func() error) error {
	root, err := storeimage.Tree(ctx, st, store.Image{ID: diffID, Layers: []digest.Digest{diffID}})
	if err != nil {
		return err
	}
	if err := treeWhiteouts(root, entries); err != nil {
		return err
	}
	p := l.imagePath(diffID)
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), tempPrefix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = composefs.WriteImage(f, root)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil && ready != nil {
		err = ready()
	}
	if err == nil {
		err = os.Rename(f.Name(), p)
	}
	return err
}

// tempPrefix names the temp files of composefs images being written.
const tempPrefix = ".tmp-"

// removeTemps removes the temp files a killed server left in the state's composefs directory.
func removeTemps(state string) error {
	tmps, err := filepath.Glob(filepath.Join(state, dirComposefs, tempPrefix+"*"))
	if err != nil {
		return err
	}
	var errs []error
	for _, t := range tmps {
		if err := os.Remove(t); err != nil && !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
