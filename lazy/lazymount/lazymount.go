// Package lazymount mounts a pending lazy pull (package lazy) with composefs: the image built
// from its TOCs, over the store's objects and then each pending layer's placeholders.
package lazymount

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

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

// OmitDigests leaves every file's fs-verity digest out of a pending pull's image: a placeholder
// has no content to digest, and the mount runs with verity off, so the digests of the objects
// stored already would only cost a read of each (the whole image, for an update whose objects
// an earlier version stored: 0.3 s of the bench's 0.45 s mount).
func (ps pendingStore) OmitDigests() bool { return true }

// OmitInline refers every file of a pending pull's image to its object, small ones included:
// the image is built beside the placeholders, before the pull has fetched any file.
func (ps pendingStore) OmitInline() bool { return true }

// MountPlan plans the mount of a pending pull at target: its composefs image (the one built
// with the pull, BuildImage, or else one built now into a temp file outside the store, never the
// store's cache) over the store's objects, then each pending layer's placeholders. done removes
// the temp file, if any (the EROFS mount holds it open). The caller holds the store's shared
// lock.
func MountPlan(ctx context.Context, s *store.Store, p *lazy.Pending, target string, opts ...mount.Option) (plan *mount.Plan, done func(), err error) {
	image, done := filepath.Join(p.Dir, store.LazyImage), func() {}
	if _, serr := os.Stat(image); serr != nil {
		f, err := os.CreateTemp("", "kura-lazy-composefs-")
		if err != nil {
			return nil, nil, err
		}
		image, done = f.Name(), func() { os.Remove(f.Name()) }
		err = build(ctx, pendingStore{s, p}, p, f)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			done()
			return nil, nil, err
		}
	}
	dirs := []string{s.ObjectsDir()}
	for _, d := range p.Pending {
		dirs = append(dirs, p.DataDir(d))
	}
	plan, err = mount.NewPlan(image, dirs, target, opts...)
	if err != nil {
		done()
		return nil, nil, fmt.Errorf("composefs image of lazy pull %s: %w", p.ID, err)
	}
	if plan.Verity == mount.VerityRequire {
		done()
		return nil, nil, fmt.Errorf("lazy pull %s is pending: its composefs image carries no fs-verity digests until it completes; mount it with verity off or on: %w", p.ID, errdefs.ErrInvalid)
	}
	return plan, done, nil
}

// BuildImage writes the composefs image of a pending pull into its directory (store.LazyImage),
// through a synced temp file and a rename, so a mount finds it whole or not at all. The image
// inlines no file (pendingStore.OmitInline) and so depends only on the entries, never on which
// objects are stored yet: it stays right until the pull completes. known are the entries of pending
// layers the caller has decoded already (the pull's own), read from their TOCs otherwise. The
// caller holds the store's shared lock.
func BuildImage(ctx context.Context, s *store.Store, p *lazy.Pending, known map[digest.Digest][]layerfs.Entry) error {
	f, err := os.CreateTemp(p.Dir, ".composefs-*")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	err = build(ctx, storeimage.WithEntries(pendingStore{s, p}, known), p, f)
	if err == nil {
		err = f.Sync() // a crash must not leave a torn image under the name
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), filepath.Join(p.Dir, store.LazyImage))
}

// build writes the composefs image of a pending pull to w.
func build(ctx context.Context, st storeimage.Store, p *lazy.Pending, w io.Writer) error {
	diffIDs, err := p.DiffIDs()
	if err != nil {
		return err
	}
	if err := storeimage.Build(ctx, st, store.Image{ID: p.ID, Layers: diffIDs}, w); err != nil {
		return fmt.Errorf("composefs image of lazy pull %s: %w", p.ID, err)
	}
	return nil
}
