package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// Removed says what RemoveImage did.
type Removed struct {
	Image digest.Digest
	// Untagged are the names removed.
	Untagged []string
	// Deleted: the image record was dropped at once. Otherwise an image left without a name stays
	// (shown as <none>) until gc: because a mount or checkout uses it (with force), or because
	// another process held the store lock.
	Deleted bool
	// InUse are the uses that keep the image's content (after a forced removal).
	InUse []Use
}

// RemoveImage is rmi: a ref name removes that name; an image ID (or unique prefix) removes every
// name of the image. Names go under the shared lock, like every ref change, so a concurrent pull
// setting a ref to the same image either wins (its ref stays, naming a stored image) or loses
// (its ref is removed). Removing the last name of an image a mount or checkout uses fails with
// ErrInUse unless force is set; force removes the names and the content stays for the uses.
// Then, if nobody holds the store lock, the image record is dropped at once under the exclusive
// lock (its layers and objects are gc's); else it waits for gc.
func (s *Store) RemoveImage(ctx context.Context, nameOrID string, force bool) (Removed, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Removed{}, err
	}
	res, err := s.untag(ctx, nameOrID, force)
	unlock()
	if err != nil || len(res.InUse) > 0 {
		return res, err
	}
	res.Deleted, err = s.dropUnnamed(ctx, res.Image)
	return res, err
}

// untag removes the names under the shared lock.
func (s *Store) untag(ctx context.Context, nameOrID string, force bool) (Removed, error) {
	img, err := s.ResolveImage(ctx, nameOrID)
	if err != nil {
		return Removed{}, err
	}
	res := Removed{Image: img.ID}
	refs, err := s.Refs(ctx)
	if err != nil {
		return res, err
	}
	left := 0
	var names []string
	for n, id := range refs {
		switch {
		case id != img.ID:
		case n == nameOrID || refs[nameOrID] != img.ID:
			names = append(names, n) // the name given, or every name when given the ID
		default:
			left++
		}
	}
	if left == 0 {
		if res.InUse, err = s.usesOf(ctx, img.ID); err != nil {
			return res, err
		}
		if len(res.InUse) > 0 && !force {
			u := res.InUse[0]
			return res, fmt.Errorf("image %s is in use by the %s at %s (%d use(s) in all; kura ps lists them): unmount or release it first, or --force to remove the names and keep the content until then: %w",
				nameOrID, u.Kind, u.Target, len(res.InUse), errdefs.ErrInUse)
		}
	}
	for _, n := range names {
		if err := s.DeleteRef(ctx, n); err != nil && !errors.Is(err, errdefs.ErrNotFound) {
			return res, err
		}
		res.Untagged = append(res.Untagged, n)
	}
	return res, nil
}

func (s *Store) usesOf(ctx context.Context, id digest.Digest) ([]Use, error) {
	uses, err := s.Uses(ctx)
	var out []Use
	for _, u := range uses {
		if u.Image == id {
			out = append(out, u)
		}
	}
	return out, err
}

// dropUnnamed deletes image id's record if no ref names it and nothing uses it, when the
// exclusive lock is free right now. It reports whether it deleted it.
func (s *Store) dropUnnamed(ctx context.Context, id digest.Digest) (bool, error) {
	x, err := s.TryLock(ctx)
	if err != nil || x == nil {
		return false, err
	}
	defer x.Unlock()
	roots, err := x.roots(ctx)
	if err != nil {
		return false, err
	}
	if _, kept := roots[id]; kept {
		return false, nil // a pull named it again, or a use began, in between
	}
	if err := x.DeleteImage(ctx, id); err != nil {
		if errors.Is(err, errdefs.ErrNotFound) {
			return false, nil
		}
		return false, err
	}
	return true, nil
}
