// Package lazymount mounts a pending lazy pull (package lazy) with composefs: the image built
// from its TOCs, over the store's objects and then each pending layer's placeholders.
package lazymount

import (
	"context"
	"fmt"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/composefs/storeimage"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

// pendingStore is the store as a composefs build of a pending pull reads it: pending layers'
// entries come from their TOC, and objects the store lacks are placeholders.
type pendingStore struct {
	*store.Store
	p *lazy.Pending
}

func (ps pendingStore) LayerEntries(ctx context.Context, d digest.Digest) ([]layerfs.Entry, error) {
	return ps.p.LayerEntries(ctx, ps.Store, d)
}

func (ps pendingStore) VerityDigests(ctx context.Context, d digest.Digest) (map[digest.Digest]verity.Digest, error) {
	if ps.p.IsPending(ps.Store, d) {
		return nil, fmt.Errorf("pending layer %s: %w", d, errdefs.ErrNotFound)
	}
	return ps.Store.VerityDigests(ctx, d)
}

func (ps pendingStore) Placeholder(d digest.Digest) bool { return !ps.Store.HasObject(d) }

// MountPlan builds the composefs image of a pending pull into a temp file (never the store's
// cache: its files without content carry no fs-verity digest) and plans its mount at target over
// the store's objects, then each pending layer's placeholders. done removes the temp file (the
// EROFS mount holds it open). The caller holds the store's shared lock.
func MountPlan(ctx context.Context, s *store.Store, p *lazy.Pending, target string, opts ...mount.Option) (plan *mount.Plan, done func(), err error) {
	diffIDs, err := p.DiffIDs()
	if err != nil {
		return nil, nil, err
	}
	f, err := os.CreateTemp("", "kura-lazy-composefs-")
	if err != nil {
		return nil, nil, err
	}
	done = func() { os.Remove(f.Name()) }
	err = storeimage.Build(ctx, pendingStore{s, p}, store.Image{ID: p.ID, Layers: diffIDs}, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	dirs := []string{s.ObjectsDir()}
	for _, d := range p.Pending {
		dirs = append(dirs, p.DataDir(d))
	}
	if err == nil {
		plan, err = mount.NewPlan(f.Name(), dirs, target, opts...)
	}
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("composefs image of lazy pull %s: %w", p.ID, err)
	}
	return plan, done, nil
}
