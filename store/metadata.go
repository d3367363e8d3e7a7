package store

import (
	"context"
	"os"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/layerfs"
)

// Metadata is the role of the store that names objects: layer records (TOC, tar-split, fs-verity
// table, under layers/), images (manifest and config, under images/), refs (refs/) and the use
// records of checkouts and mounts (uses/). Its methods are in meta.go (layers, images, refs) and
// uses.go (uses); the deletes are Exclusive's, which alone may delete.
//
// It depends on the objects role only through layerObjects, for what recording a layer needs
// (the presence check, reading an object whose fs-verity digest is not known yet), and on the
// store handle only through storeHandle (its lock, its chunk index). A Metadata comes with a
// Store (Open); the zero value names no directory.
type Metadata struct {
	root string
	// verity: record the fs-verity digest of each object of a layer recorded (WithVerity).
	verity  bool
	objects layerObjects
	handle  storeHandle
}

// layerObjects is what recording a layer needs of the objects role: a descriptor of objects/ to
// check that every object the TOC names is stored, and reads of an object whose fs-verity digest
// no writer computed. *Objects implements it.
type layerObjects interface {
	OpenObjectDir() (*ObjectDir, error)
	Open(ctx context.Context, d digest.Digest) (*os.File, error)
}

// storeHandle is what the metadata role needs of the Store it belongs to: writes require a lock
// held through that handle (which may be read-only), and the handle's chunk index learns of each
// layer recorded. *Store implements it.
type storeHandle interface {
	ReadOnly() bool
	requireLock() error
	indexLayerChunks(layer digest.Digest, entries []layerfs.Entry)
}

func newMetadata(root string, verity bool, objects layerObjects, handle storeHandle) Metadata {
	return Metadata{root: root, verity: verity, objects: objects, handle: handle}
}

// requireLock guards metadata writes with the lock of the store handle (see Store.requireLock).
func (s *Metadata) requireLock() error { return s.handle.requireLock() }

// indexLayerChunks tells the store handle's chunk index of a layer just recorded.
func (s *Metadata) indexLayerChunks(layer digest.Digest, entries []layerfs.Entry) {
	s.handle.indexLayerChunks(layer, entries)
}
