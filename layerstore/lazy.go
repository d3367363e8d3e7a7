package layerstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/composefs/storeimage"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

// dirPending holds the mounts of layers of pending lazy pulls: pending/<hex of DiffID>, apart
// from mnt/ (a complete layer's mount records a use; these cannot, there is no layer record).
const dirPending = "pending"

// pendingLayer is the store as the composefs build of one pending layer reads it: its entries
// from the pending pull's TOC, and objects the store lacks are placeholders.
type pendingLayer struct {
	*store.Store
	p      *lazy.Pending
	diffID digest.Digest
}

func (pl pendingLayer) LayerEntries(ctx context.Context, d digest.Digest) ([]layerfs.Entry, error) {
	if d != pl.diffID {
		return nil, fmt.Errorf("layer %s is not the pending layer %s: %w", d, pl.diffID, errdefs.ErrNotFound)
	}
	return pl.p.Entries(d)
}

func (pl pendingLayer) VerityDigests(ctx context.Context, d digest.Digest) (map[digest.Digest]verity.Digest, error) {
	return nil, fmt.Errorf("pending layer %s: %w", d, errdefs.ErrNotFound)
}

func (pl pendingLayer) Placeholder(d digest.Digest) bool { return !pl.Store.HasObject(d) }

// PendingDir mounts one layer of a pending lazy pull alone, as composefsDir mounts a stored one
// (whiteouts escaped for the overlay stacked on it), over the store's objects and then the
// layer's placeholders: a file whose object is stored is read from objects/, any other from its
// placeholder, whose first read the fill service answers. Nothing records a use (the layer has
// no record yet: gc keeps what the pending pull needs). A mount found in place is reused. The
// composefs image is a temp file removed once mounted (the EROFS mount holds it open).
func (l *Layers) PendingDir(ctx context.Context, p *lazy.Pending, diffID digest.Digest) (string, error) {
	l.dirs.Lock()
	defer l.dirs.Unlock()
	target := filepath.Join(l.opts.State, dirPending, diffID.Encoded())
	if _, ok, err := mount.Find(target); err != nil || ok {
		return target, err
	}
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	entries, err := p.Entries(diffID)
	if err != nil {
		return "", err
	}
	root, err := storeimage.Tree(ctx, pendingLayer{l.s, p, diffID}, store.Image{ID: p.ID, Layers: []digest.Digest{diffID}})
	if err == nil {
		err = treeWhiteouts(root, entries)
	}
	if err != nil {
		return "", fmt.Errorf("layer store: composefs image of pending layer %s: %w", diffID, err)
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", err
	}
	f, err := os.CreateTemp(filepath.Dir(target), ".cfs-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	err = composefs.WriteImage(f, root)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var plan *mount.Plan
	if err == nil {
		plan, err = mount.NewPlan(f.Name(), []string{l.s.ObjectsDir(), p.DataDir(diffID)}, target)
	}
	if err == nil {
		err = mount.Mount(ctx, plan)
	}
	if err != nil {
		return "", fmt.Errorf("layer store: mounting pending layer %s: %w", diffID, err)
	}
	l.opts.Log.Info("pending layer mounted", "diffID", diffID, "pull", p.ID, "dir", target)
	return target, nil
}
