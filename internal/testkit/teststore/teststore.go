// Package teststore opens scratch stores for tests and records test images in them, so that every
// package's tests set a store up the same way: in t.TempDir(), without fsync unless a test is about
// durability. Only tests import it.
package teststore

import (
	"bytes"
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

type config struct {
	root   string
	synced bool
	locked bool
	opts   []store.Option
}

// Option changes how Open opens the store.
type Option func(*config)

// At opens the store at root instead of a fresh t.TempDir().
func At(root string) Option { return func(c *config) { c.root = root } }

// Synced keeps fsync on, for the tests of what a crash leaves.
func Synced() Option { return func(c *config) { c.synced = true } }

// Locked holds the store's read lock until the test ends, as a command does for its whole run.
func Locked() Option { return func(c *config) { c.locked = true } }

// With passes store options (store.WithVerity …) through.
func With(opts ...store.Option) Option {
	return func(c *config) { c.opts = append(c.opts, opts...) }
}

// Open opens a store for the test (see the options); it fails the test if it cannot.
func Open(t testing.TB, opts ...Option) *store.Store {
	t.Helper()
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.root == "" {
		c.root = t.TempDir()
	}
	sopts := c.opts
	if !c.synced {
		sopts = append([]store.Option{store.WithoutSync()}, sopts...)
	}
	s, err := store.Open(c.root, sopts...)
	if err != nil {
		t.Fatal(err)
	}
	if c.locked {
		t.Cleanup(rlock(t, s))
	}
	return s
}

// Image imports layer tars (layer.Import, under the read lock) and records a linux/amd64 image
// of them.
func Image(t testing.TB, s *store.Store, tars ...[]byte) store.Image {
	t.Helper()
	ctx := context.Background()
	defer rlock(t, s)()
	var diffIDs []digest.Digest
	var descs []ocispec.Descriptor
	for _, b := range tars {
		l, err := layer.Import(ctx, s, bytes.NewReader(b), layer.Options{})
		if err != nil {
			t.Fatal(err)
		}
		diffIDs = append(diffIDs, l.DiffID)
		descs = append(descs, ocispec.Descriptor{MediaType: ocispec.MediaTypeImageLayer, Digest: l.DiffID, Size: int64(len(b))})
	}
	return PutImage(t, s, diffIDs, descs)
}

// Named is Image, then name set to point at the image.
func Named(t testing.TB, s *store.Store, name string, tars ...[]byte) store.Image {
	t.Helper()
	ctx := context.Background()
	defer rlock(t, s)()
	img := Image(t, s, tars...)
	if err := s.SetRef(ctx, name, img.ID); err != nil {
		t.Fatal(err)
	}
	return img
}

// PutImage records a linux/amd64 image whose config lists diffIDs and whose manifest lists descs
// (layers already stored, or deliberately not).
func PutImage(t testing.TB, s *store.Store, diffIDs []digest.Digest, descs []ocispec.Descriptor) store.Image {
	t.Helper()
	ctx := context.Background()
	defer rlock(t, s)()
	config, manifest := imagetest.Meta(diffIDs, descs)
	img, err := s.PutImage(ctx, manifest, config)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// rlock takes the store's read lock, which every write needs, and returns its release.
func rlock(t testing.TB, s *store.Store) func() {
	t.Helper()
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return unlock
}
