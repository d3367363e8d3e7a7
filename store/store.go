// Package store owns Kura's content-addressed local store on disk: objects named by the sha256 of
// their content, layer metadata (TOC and tar-split, keyed by DiffID), images (manifest and config)
// and refs, with crash-safe writes and flock-based locking. docs/design.md specifies the format.
package store

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
)

// Directory names under the store root (see docs/design.md).
const (
	dirObjects  = "objects"
	dirLayers   = "layers"
	dirImages   = "images"
	dirRefs     = "refs"
	dirTmp      = "tmp"
	dirVariants = "variants"
	dirCompose  = "composefs"
	fileLock    = "lock"
	fileVersion = "version"

	formatVersion = "kura-store 1\n"
)

// Provider reads objects by digest.
type Provider interface {
	// Stat returns the object's info, or an error wrapping errdefs.ErrNotFound.
	Stat(ctx context.Context, d digest.Digest) (Info, error)
	// Open opens the object read-only.
	Open(ctx context.Context, d digest.Digest) (*os.File, error)
}

// Ingester adds objects.
type Ingester interface {
	// Ingest starts writing one object. expected may be empty (the content names itself) and size
	// may be -1 (unknown). When expected is given and already stored, Ingest returns an error
	// wrapping errdefs.ErrAlreadyExists, which callers treat as success.
	Ingest(ctx context.Context, expected digest.Digest, size int64) (Writer, error)
}

// Writer receives the bytes of one object being ingested.
type Writer interface {
	Write(p []byte) (int, error)
	// Commit verifies size and digest and makes the object visible. An object that exists
	// already (written concurrently by another ingest) is success.
	Commit(ctx context.Context) (digest.Digest, error)
	// Abort discards everything written; it leaves no trace.
	Abort() error
	// WriteHole appends n zero bytes, which become a hole where the file system allows.
	WriteHole(n int64) error
}

// ChunkLocation says where a chunk of some file is stored: inside object Object, at Offset.
type ChunkLocation struct {
	Object digest.Digest
	Offset int64
	Size   int64
}

// ChunkFinder finds stored bytes by the digest of a chunk (the TOC chunkDigest), so that a partial
// pull can reuse chunks of large files that changed elsewhere.
type ChunkFinder interface {
	FindChunk(ctx context.Context, chunk digest.Digest, size int64) (ChunkLocation, error)
}

// Store is a store rooted at one directory: a thin facade over its two roles, the
// content-addressed objects (the embedded Objects: has, stat, open, walk, paths, variants; Ingest
// and Batch in ingest.go) and the metadata that names them (the embedded Metadata: layers,
// images, refs in meta.go; checkouts and mounts in uses.go), plus what both share and what spans
// both: locks, temp files, sync settings, the chunk index, gc, fsck, rmi and usage. Consumers
// depend on the narrowest role they use (Provider, Ingester, or an interface of their own), not
// on *Store. It is safe for concurrent use by goroutines and by several processes (see Lock,
// RLock).
type Store struct {
	Objects
	Metadata

	root string
	// verity: writers compute each object's fs-verity digest as it streams in (WithVerity);
	// Metadata, which records them with the layer, has its copy.
	verity bool
	noSync bool
	// readOnly: the store cannot be written (a read-only file system, or another user's store);
	// it still serves reads, under a lock taken on a read-only descriptor.
	readOnly bool

	held atomic.Int32 // locks held through this handle; writes require one
	// onLockWait, when set (by tests), is called when a lock cannot be had at once.
	onLockWait func()
	// onGatePassed, when set (by tests), is called between a lock's gate and its flock.
	onGatePassed func()

	chunksMu sync.Mutex
	chunks   *chunkIndex
	// chunksRefreshed: chunks covers every layer stored when this handle first looked.
	chunksRefreshed bool

	tempShards    atomic.Uint32 // round-robin counter over tmp/o-N
	tempShardMade atomic.Uint32 // bit N: tmp/o-N exists (as far as this handle knows)
}

// Option configures Open.
type Option func(*Store)

// WithVerity records the fs-verity digest of every object of a layer when the layer is
// committed (computed while the object streams in, else by reading it), for composefs.
func WithVerity() Option { return func(s *Store) { s.verity = true } }

// WithoutSync skips fsync of objects: for tests and fuzzing only, where a power loss does not
// matter. Ordering and verification are unchanged.
func WithoutSync() Option { return func(s *Store) { s.noSync = true } }

// Open opens (creating if needed) the store at root. A store that exists but cannot be written
// (a read-only file system, or a store another user owns) opens read-only: reads work, writes
// fail with errdefs.ErrPermission.
func Open(root string, opts ...Option) (*Store, error) {
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("store root %q: %w", root, err)
	}
	s := &Store{Objects: newObjects(abs), root: abs}
	for _, o := range opts {
		o(s)
	}
	s.Metadata = newMetadata(abs, s.verity, &s.Objects, s)
	vpath := filepath.Join(abs, fileVersion)
	if exists(vpath) && unix.Access(abs, unix.W_OK) != nil {
		s.readOnly = true
		if err := s.checkVersion(vpath); err != nil {
			return nil, err
		}
		return s, nil
	}
	for _, d := range []string{"", dirObjects, dirLayers, dirImages, dirRefs, dirTmp, dirVariants, dirCompose} {
		if err := os.MkdirAll(filepath.Join(abs, d), 0o700); err != nil {
			return nil, fmt.Errorf("creating store %s: %w", abs, err)
		}
	}
	// Every object's inode is made in a temp directory of tmp/ (the shards, records' dirs).
	SpreadSubdirs(filepath.Join(abs, dirTmp))
	if !exists(vpath) {
		if err := createStore(abs, vpath); err != nil {
			return nil, fmt.Errorf("creating store %s: %w", abs, err)
		}
	}
	if err := s.checkVersion(vpath); err != nil {
		return nil, err
	}
	return s, nil
}

// createStore writes a new store's usage and version files, the version last. Their temp files
// go in the root, not tmp/: Open holds no store lock yet, and a gc running in another process
// empties tmp/ under its exclusive lock. A creation killed before its renames leaves them there,
// and the version missing, so the next Open creates again: it removes them then. It holds an
// flock of the root directory meanwhile, so that processes creating one store at once never
// remove each other's temp files (no other lock is taken on a writable store's root).
func createStore(root, vpath string) error {
	d, err := os.Open(root)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := unix.Flock(int(d.Fd()), unix.LOCK_EX); err != nil {
		return err
	}
	if exists(vpath) {
		return nil // made by another process meanwhile
	}
	if err := removeCreationTemps(root); err != nil {
		return err
	}
	// A new store starts with known totals: zero objects (see usageFile).
	if err := createZeroTotals(root); err != nil {
		return err
	}
	return writeFileAtomic(root, vpath, []byte(formatVersion), 0o444)
}

// removeCreationTemps removes the temp files of a killed creation from the root: usage-* of
// createZeroTotals and meta-* of writeFileAtomic.
func removeCreationTemps(root string) error {
	ents, err := os.ReadDir(root)
	if err != nil {
		return err
	}
	for _, e := range ents {
		n := e.Name()
		if e.Type().IsRegular() && (strings.HasPrefix(n, "usage-") || strings.HasPrefix(n, "meta-")) {
			if err := os.Remove(filepath.Join(root, n)); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
	}
	return nil
}

func (s *Store) checkVersion(vpath string) error {
	b, err := os.ReadFile(vpath)
	switch {
	case err != nil:
		return fmt.Errorf("opening store %s: %w", s.root, err)
	case string(b) != formatVersion:
		return fmt.Errorf("store %s has format %q, this build reads %q: %w", s.root, b, formatVersion, errdefs.ErrUnsupported)
	}
	return nil
}

// ReadOnly says whether the store was opened read-only (see Open).
func (s *Store) ReadOnly() bool { return s.readOnly }

// writable refuses writes to a read-only store, with a clearer error than the first EROFS.
func (s *Store) writable() error {
	if s.readOnly {
		return fmt.Errorf("store %s is read-only (read-only file system or not ours): %w", s.root, errdefs.ErrPermission)
	}
	return nil
}

// Root is the store directory.
func (s *Store) Root() string { return s.root }

// TempDir is the store's directory for files being written; anything in it may be removed by gc
// and fsck --repair (under the exclusive lock).
func (s *Store) TempDir() string { return filepath.Join(s.root, dirTmp) }

// ComposefsPath is where the cached composefs image of image id lives (whether or not it exists).
// The cache is derived data: gc removes the images of removed images, and a missing one is rebuilt.
func (s *Store) ComposefsPath(id digest.Digest) (string, error) {
	if err := checkDigest(id); err != nil {
		return "", err
	}
	return filepath.Join(s.root, dirCompose, id.Encoded()+".cfs"), nil
}
