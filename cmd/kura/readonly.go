package main

import (
	"context"
	"fmt"
	"os"

	"github.com/kura-oci/kura/composefs/storeimage"
	"github.com/kura-oci/kura/store"
)

// imageCache is what composefsImage needs of the store: storeimage's reads and cache, and
// whether the cache can be written.
type imageCache interface {
	storeimage.Cache
	ReadOnly() bool
}

// composefsImage is the composefs image to mount img from: the store's cached one, built and
// cached if missing. A read-only store cannot cache it, so a missing one is built in a temp file
// outside the store, which the caller removes once the mount holds it (done); the EROFS mount
// keeps the file open, so removing it takes nothing from the mount.
func composefsImage(ctx context.Context, s imageCache, img store.Image) (path string, done func(), err error) {
	p, err := s.ComposefsPath(img.ID)
	if err != nil {
		return "", nil, err
	}
	if _, err := os.Stat(p); err == nil || !s.ReadOnly() {
		p, err := storeimage.Ensure(ctx, s, img)
		return p, func() {}, err
	}
	f, err := os.CreateTemp("", "kura-composefs-")
	if err != nil {
		return "", nil, err
	}
	done = func() { os.Remove(f.Name()) }
	err = storeimage.Build(ctx, s, img, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		done()
		return "", nil, fmt.Errorf("building the composefs image of %s: %w", img.ID, err)
	}
	return f.Name(), done, nil
}
