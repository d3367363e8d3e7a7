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

// EntriesResolver is a Resolver whose pulls hand each layer's entries over as they parse them
// (pull.WithLayerEntries). With composefs diffs the layer store then builds a layer's composefs
// image from them as soon as the pull has recorded the layer, without decoding its TOC again
// (twice, before), and mounts it before podman's next use of diff (its container's overlay)
// asks for it.
type EntriesResolver interface {
	Resolver
	ResolveWithEntries(ctx context.Context, ref string, fn pull.LayerEntriesFunc) (Pulled, error)
}

// prebuild is one layer's composefs image to be built from the entries a pull handed over.
type prebuild struct {
	verified chan struct{} // closed by the pull's done: recorded is set then
	recorded bool
	done     chan struct{} // closed once the image is in place, or given up
}

// layerEntries is the pull.LayerEntriesFunc of the layer store's pulls: unless the layer's
// image is there or being built, it keeps entries to build it from once the layer is recorded.
func (l *Layers) layerEntries(diffID, prev digest.Digest, entries []layerfs.Entry) func(recorded bool) {
	if _, _, ok := l.findImage(diffID); ok {
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
	go l.runPrebuild(diffID, prev, entries, pb)
	var once sync.Once
	return func(recorded bool) {
		once.Do(func() { pb.recorded = recorded; close(pb.verified) })
	}
}

// runPrebuild builds the image once the pull has recorded the layer with these very entries
// (an image made from entries that fail verification is never made), from the entries the pull
// decoded: the layer's TOC is not decoded again. It starts then, not at once: built while the
// pull runs, it took the pull's CPU (the pull, which fetches, assembles and hashes at once on
// two cores, took about 45 ms longer on the bench's updates, all that podman run gained). Built
// from the record on, it is done, and the layer mounted, before podman's container asks for
// diff. It holds the store's shared lock for the objects it inlines.
func (l *Layers) runPrebuild(diffID, prev digest.Digest, entries []layerfs.Entry, pb *prebuild) {
	defer func() {
		l.pmu.Lock()
		delete(l.prebuilds, diffID)
		l.pmu.Unlock()
		close(pb.done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), DefaultLookupTimeout)
	defer cancel()
	err := pb.wait(ctx)
	if errors.Is(err, errNotRecorded) {
		return // built when mounted, from what the store recorded
	}
	start := time.Now()
	if err == nil {
		var unlock func()
		if unlock, err = l.s.RLock(ctx); err == nil {
			var base digest.Digest
			base, err = l.writeLayerImage(ctx, diffID, prev, entries)
			unlock()
			if err == nil {
				l.opts.Log.Info("layer image built from the pull's entries", "diffID", diffID, "above", base, "took", time.Since(start))
				return
			}
		}
	}
	l.opts.Log.Warn("building a layer's composefs image from its pull's entries failed; it is built when mounted", "diffID", diffID, "err", err)
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

// awaitPrebuild waits until an image to be built from a pull's entries of diffID is in place or given
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

// imagePath is where the composefs image of layer diffID is kept. Dense images have a name of
// their own: a server started on an older kernel never mounts one (it would show every compact
// inode's mtime as the image's epoch), it builds the layer's image again.
func (l *Layers) imagePath(diffID digest.Digest) string {
	return filepath.Join(l.opts.State, dirComposefs, diffID.Encoded()+imageSuffix(l.dense))
}

func imageSuffix(dense bool) string {
	if dense {
		return ".dense.cfs"
	}
	return ".cfs"
}

// imageOptions are how the per-layer images are written: with dense inodes where the kernel
// reads them, a third smaller (192 bytes an external file in mkcomposefs's layout, 128 dense),
// which is the page cache every container that looks the layer's files up pays for.
func (l *Layers) imageOptions() []composefs.Option {
	if l.dense {
		return []composefs.Option{composefs.WithDenseInodes()}
	}
	return nil
}

// writeLayerImage builds the image of one layer from its entries (decoded once, for the tree and
// for its whiteouts; no fs-verity digests, see layerImage): stacked above the full image of the
// layer prev is an update of, or of the base prev's image stacks above, where the base's tree is
// known and the delta small (stacked.go); else full, and then remembered as a base. It
// writes a temp file beside its place and renames it there: a server killed meanwhile leaves
// only the temp file, which the next one removes (removeTemps). It returns the base stacked
// above, or "".
func (l *Layers) writeLayerImage(ctx context.Context, diffID, prev digest.Digest, entries []layerfs.Entry) (digest.Digest, error) {
	root, err := l.layerTree(ctx, diffID, entries)
	if err != nil {
		return "", err
	}
	if base, broot := l.stackBase(ctx, prev); broot != nil && base != diffID {
		if delta, nodes := composefs.DeltaTree(root, broot); delta != nil && nodes*maxDeltaShare <= composefs.CountNodes(root) {
			opts := append(l.imageOptions(), composefs.WithStacking())
			return base, writeImageFile(l.stackedPath(diffID, base), delta, opts)
		}
	}
	p := l.imagePath(diffID)
	if err := writeImageFile(p, root, l.imageOptions()); err != nil {
		return "", err
	}
	if l.dense {
		l.base.remember(diffID, root, p)
	}
	return "", nil
}

// layerTree is the composefs tree of one layer's image, from its entries.
func (l *Layers) layerTree(ctx context.Context, diffID digest.Digest, entries []layerfs.Entry) (*composefs.Node, error) {
	st := storeimage.WithEntries(storeimage.WithoutDigests(l.s), map[digest.Digest][]layerfs.Entry{diffID: entries})
	root, err := storeimage.Tree(ctx, st, store.Image{ID: diffID, Layers: []digest.Digest{diffID}})
	if err != nil {
		return nil, err
	}
	if err := treeWhiteouts(root, entries); err != nil {
		return nil, err
	}
	return root, nil
}

// writeImageFile writes the image of root at p, through a temp file renamed into place.
func writeImageFile(p string, root *composefs.Node, opts []composefs.Option) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(filepath.Dir(p), tempPrefix+"*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = composefs.WriteImage(f, root, opts...)
	if cerr := f.Close(); err == nil {
		err = cerr
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
