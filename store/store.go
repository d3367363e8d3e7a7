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
	"syscall"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
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

// Info describes one stored object.
type Info struct {
	Digest digest.Digest
	Size   int64
	// Allocated is the disk the object takes (st_blocks): less than Size where it has holes.
	// Walk fills it in; Stat leaves it zero.
	Allocated int64
}

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

// Manager lists and removes objects; *Exclusive implements it (removal needs the exclusive lock).
type Manager interface {
	Walk(ctx context.Context, fn func(Info) error) error
	Delete(ctx context.Context, d digest.Digest) error
}

// ObjectStore is the full object role set; *Exclusive implements it.
type ObjectStore interface {
	Provider
	Ingester
	Manager
}

// Store is a store rooted at one directory. It is safe for concurrent use by goroutines and by
// several processes (see Lock, RLock).
type Store struct {
	root   string
	verity bool
	noSync bool
	// readOnly: the store cannot be written (a read-only file system, or another user's store);
	// it still serves reads, under a lock taken on a read-only descriptor.
	readOnly bool

	held atomic.Int32 // locks held through this handle; writes require one

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
	s := &Store{root: abs}
	for _, o := range opts {
		o(s)
	}
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
	if !exists(vpath) {
		// The temp file goes in the root, not tmp/: Open holds no lock yet, and a gc running in
		// another process empties tmp/ under its exclusive lock.
		if err := writeFileAtomic(abs, vpath, []byte(formatVersion), 0o444); err != nil {
			return nil, fmt.Errorf("creating store %s: %w", abs, err)
		}
	}
	if err := s.checkVersion(vpath); err != nil {
		return nil, err
	}
	return s, nil
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

// ObjectPath is where the object with digest d lives (whether or not it exists). Checkout and
// composefs use it to reflink or reference the file directly.
func (s *Store) ObjectPath(d digest.Digest) (string, error) {
	rel, err := relPath(d)
	if err != nil {
		return "", err
	}
	return filepath.Join(s.root, dirObjects, rel), nil
}

// checkDigest accepts only well-formed sha256 digests, the only kind the store names things by.
func checkDigest(d digest.Digest) error {
	if digests.IsSHA256(d) {
		return nil
	}
	if err := d.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v: %w", d, err, errdefs.ErrInvalid)
	}
	if d.Algorithm() != digest.SHA256 {
		return fmt.Errorf("digest %q: only sha256 is stored: %w", d, errdefs.ErrUnsupported)
	}
	return nil
}

// Stat implements Provider.
func (s *Store) Stat(ctx context.Context, d digest.Digest) (Info, error) {
	p, err := s.ObjectPath(d)
	if err != nil {
		return Info{}, err
	}
	fi, err := os.Stat(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return Info{}, fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
		}
		return Info{}, fmt.Errorf("object %s: %w", d, err)
	}
	return Info{Digest: d, Size: fi.Size()}, nil
}

// HasObject says whether object d is stored (one stat).
func (s *Store) HasObject(d digest.Digest) bool {
	_, err := s.Stat(context.Background(), d)
	return err == nil
}

// Open implements Provider.
func (s *Store) Open(ctx context.Context, d digest.Digest) (*os.File, error) {
	p, err := s.ObjectPath(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("object %s: %w", d, err)
	}
	return f, nil
}

// Walk implements Manager: it calls fn for every object, in no particular order.
func (s *Store) Walk(ctx context.Context, fn func(Info) error) error {
	base := filepath.Join(s.root, dirObjects)
	fans, err := os.ReadDir(base)
	if err != nil {
		return fmt.Errorf("listing objects: %w", err)
	}
	for _, fan := range fans {
		if !fan.IsDir() || len(fan.Name()) != 2 {
			continue
		}
		ents, err := os.ReadDir(filepath.Join(base, fan.Name()))
		if err != nil {
			return fmt.Errorf("listing objects: %w", err)
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return err
			}
			d := digest.NewDigestFromEncoded(digest.SHA256, fan.Name()+e.Name())
			if d.Validate() != nil {
				continue // fsck reports stray names
			}
			fi, err := e.Info()
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return fmt.Errorf("object %s: %w", d, err)
			}
			if err := fn(Info{Digest: d, Size: fi.Size(), Allocated: allocated(fi)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// Delete implements Manager. Only under the exclusive lock: a concurrent import may be about to
// reference the object.
func (x *Exclusive) Delete(ctx context.Context, d digest.Digest) error {
	if err := x.check(); err != nil {
		return err
	}
	p, err := x.ObjectPath(d)
	if err != nil {
		return err
	}
	if err := os.Remove(p); err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("object %s: %w", d, errdefs.ErrNotFound)
		}
		return fmt.Errorf("deleting object %s: %w", d, err)
	}
	return nil
}

// VariantPath is where a hardlink checkout keeps the copy of object obj that carries one set of
// metadata: variants/<obj hex[:2]>/<obj hex[2:]>-<key hex>, where key digests content and
// metadata (see package checkout). The name carries the object so that fsck can check a variant's
// content. gc removes variants that no checkout links to any more.
func (s *Store) VariantPath(obj, key digest.Digest) (string, error) {
	if err := checkDigest(obj); err != nil {
		return "", err
	}
	if err := checkDigest(key); err != nil {
		return "", err
	}
	h := obj.Encoded()
	return filepath.Join(s.root, dirVariants, h[:2], h[2:]+"-"+key.Encoded()), nil
}

// parseVariantName returns the object a variant file in variants/<fan>/ holds, from its name.
// ok is false for anything else, including the variants of older stores (named by key alone),
// whose object cannot be known.
func parseVariantName(fan, name string) (obj digest.Digest, ok bool) {
	rest, key, found := strings.Cut(name, "-")
	if !found || len(fan) != 2 || len(rest) != 62 || !digests.IsSHA256(digest.NewDigestFromEncoded(digest.SHA256, key)) {
		return "", false
	}
	obj = digest.NewDigestFromEncoded(digest.SHA256, fan+rest)
	return obj, digests.IsSHA256(obj)
}

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

// allocated is the disk a file takes, from st_blocks (512-byte units whatever the block size).
func allocated(fi fs.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
