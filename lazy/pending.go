// Package lazy keeps the state of lazy pulls and fills their placeholders on demand: an image
// whose layers are not all stored yet can be mounted with composefs, each missing object being
// an empty placeholder in a directory of its own that the mount adds as a second data-only
// layer; the first open of a placeholder (overlay opens it when the mounted file is opened)
// raises a fanotify permission event, and the fill service stores the object (fetched and
// verified), copies it into the placeholder and lets the opener go. Where pre-content events
// are missing, FUSEServer covers the placeholder directory with a FUSE file system that fills
// on open and serves the stored object. docs/design.md (Lazy pulls) is the normative
// description.
package lazy

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
)

// DirName is the store's directory of pending lazy pulls: lazy/<manifest hex>/.
const DirName = store.LazyDir

const (
	recordName = store.LazyRecord
	tocName    = store.LazyTOC
	dataName   = "objects"
	maxTOCZst  = 1 << 30 // decoded bound, as the store's own metadata
)

// Record is pull.json: what a pending lazy pull must end as.
type Record struct {
	Name     string `json:"name"`     // the ref set when the image is complete
	Source   string `json:"source"`   // HOST/REPO@sha256:… the fill service fetches from
	Manifest []byte `json:"manifest"` // the manifest bytes (sha256 = the directory name)
	Config   []byte `json:"config"`
	// Pending are the DiffIDs of the layers not stored when the pull began, each with a
	// directory <DiffID hex>/ holding its TOC frame and its placeholders.
	Pending []digest.Digest `json:"pending"`
	// TarSizes are the sizes of the pending layers' tars, from their tar-splits: what a layer
	// store tells containers/storage (info's diff-size) before the layer is complete. Missing
	// in records written before it was added.
	TarSizes map[digest.Digest]int64 `json:"tarSizes,omitempty"`
}

// Pending is one pending lazy pull in a store.
type Pending struct {
	ID  digest.Digest // the manifest digest
	Dir string
	Record
}

// Root is the directory of pending lazy pulls of s.
func Root(s *store.Store) string { return filepath.Join(s.Root(), DirName) }

// Create records a pending lazy pull: each pending layer's verified TOC frame, then pull.json,
// in a temp directory renamed into place, as the store writes its records: every file and
// directory is fsynced before the rename and lazy/ after it, so a power loss leaves either no
// pending pull or a whole one (a truncated pull.json would stop gc). An existing pending pull
// of the same manifest is returned as it is: its placeholders may be what a live mount reads,
// so they are never made anew.
func Create(s *store.Store, id digest.Digest, rec Record, tocs map[digest.Digest][]byte) (*Pending, error) {
	if p, err := Open(s, id); err == nil || !errors.Is(err, errdefs.ErrNotFound) {
		return p, err
	}
	if err := os.MkdirAll(Root(s), 0o700); err != nil {
		return nil, err
	}
	if err := store.SyncDir(s.Root()); err != nil { // lazy/ itself may be new
		return nil, err
	}
	tmp, err := os.MkdirTemp(s.TempDir(), "dir-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if err := writeRecord(tmp, rec, tocs); err != nil {
		return nil, fmt.Errorf("recording lazy pull %s: %w", id, err)
	}
	err = os.Rename(tmp, filepath.Join(Root(s), id.Encoded()))
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	if err == nil {
		if err := store.SyncDir(Root(s)); err != nil {
			return nil, err
		}
	}
	return Open(s, id)
}

// writeRecord writes a pending pull's files into dir, each fsynced, and fsyncs every directory
// it made.
func writeRecord(dir string, rec Record, tocs map[digest.Digest][]byte) error {
	for _, d := range rec.Pending {
		layerDir := filepath.Join(dir, d.Encoded())
		if err := os.MkdirAll(filepath.Join(layerDir, dataName), 0o755); err != nil {
			return err
		}
		// The placeholders' fan-out directories, and the placeholders in them, away from the
		// block groups a removed store (the last pull's placeholders) just freed.
		store.SpreadSubdirs(filepath.Join(layerDir, dataName))
		if err := writeSynced(filepath.Join(layerDir, tocName), tocs[d]); err != nil {
			return err
		}
		if err := store.SyncDir(layerDir); err != nil {
			return err
		}
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := writeSynced(filepath.Join(dir, recordName), b); err != nil {
		return err
	}
	return store.SyncDir(dir)
}

// writeSynced creates the read-only file p with b and fsyncs it.
func writeSynced(p string, b []byte) error {
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Open reads the pending lazy pull of manifest id: ErrNotFound if there is none.
func Open(s *store.Store, id digest.Digest) (*Pending, error) {
	if err := id.Validate(); err != nil {
		return nil, fmt.Errorf("lazy pull %q: %w", id, errdefs.ErrInvalid)
	}
	dir := filepath.Join(Root(s), id.Encoded())
	b, err := os.ReadFile(filepath.Join(dir, recordName))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lazy pull %s: %w", id, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	p := &Pending{ID: id, Dir: dir}
	if err := json.Unmarshal(b, &p.Record); err != nil {
		return nil, fmt.Errorf("lazy pull %s: %s: %v (kura fsck --repair removes a pending pull that cannot be read): %w", id, recordName, err, errdefs.ErrInvalid)
	}
	if digest.FromBytes(p.Manifest) != id {
		return nil, fmt.Errorf("lazy pull %s: the manifest does not hash to its name: %w", id, errdefs.ErrDigestMismatch)
	}
	for _, d := range p.Pending {
		if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("lazy pull %s: pending layer %q: %w", id, d, errdefs.ErrInvalid)
		}
	}
	return p, nil
}

// FindByName returns the pending lazy pull whose ref will be name.
func FindByName(s *store.Store, name string) (*Pending, error) {
	ents, err := os.ReadDir(Root(s))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	for _, e := range ents {
		p, err := Open(s, digest.NewDigestFromEncoded(digest.SHA256, e.Name()))
		if err == nil && (p.Name == name || p.ID.String() == name) {
			return p, nil
		}
	}
	return nil, fmt.Errorf("no image or lazy pull named %s: %w", name, errdefs.ErrNotFound)
}

// LockServe takes the pending pull for one fill service (flock on its record, released when
// the process ends, crash included): two services would both mark and fill the placeholders.
// ErrInUse if another holds it.
func (p *Pending) LockServe() (release func(), err error) {
	f, err := os.Open(filepath.Join(p.Dir, recordName))
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("lazy pull %s is being served by another process: %w", p.ID, errdefs.ErrInUse)
		}
		return nil, err
	}
	return func() { f.Close() }, nil
}

// DataDir is the placeholder directory of a pending layer, laid out as objects/ (xx/rest): the
// mount adds it as a data-only layer after the store's objects/.
func (p *Pending) DataDir(diffID digest.Digest) string {
	return filepath.Join(p.Dir, diffID.Encoded(), dataName)
}

// Entries decodes a pending layer's TOC.
func (p *Pending) Entries(diffID digest.Digest) ([]layerfs.Entry, error) {
	z, err := os.ReadFile(filepath.Join(p.Dir, diffID.Encoded(), tocName))
	if err != nil {
		return nil, err
	}
	dec, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxTOCZst))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	b, err := dec.DecodeAll(z, nil)
	if err != nil {
		return nil, fmt.Errorf("TOC of pending layer %s: %v: %w", diffID, err, errdefs.ErrInvalid)
	}
	toc, err := chunked.ParseTOC(b)
	if err != nil {
		return nil, fmt.Errorf("TOC of pending layer %s: %w", diffID, err)
	}
	return chunked.DecodeEntries(toc)
}

// Remove deletes the pending pull (renamed to a lazy/.rm-* sibling first, so it disappears at
// once; gc removes one a crash left). A live mount keeps reading the placeholders it opened:
// unlinked, not gone.
func (p *Pending) Remove(ctx context.Context) error {
	tmp, err := os.MkdirTemp(filepath.Dir(p.Dir), store.LazyRemovedPrefix)
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if err := os.Rename(p.Dir, filepath.Join(tmp, "x")); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	return nil
}

// MakePlaceholders creates an empty placeholder for each object of a pending layer that the
// store lacks and that has none yet; an existing placeholder is kept as it is (a live mount may
// hold it). Placeholders stay at length 0 until filled, so a read the fill service does not
// answer is short, never zeros. Creating thousands of inodes is most of a lazy start-up's time
// (a few ms each on a busy ext4), so the fan-out directories are shared out between
// placeholderWorkers goroutines, each directory to one of them, whose creations then overlap.
func (p *Pending) MakePlaceholders(s *store.Store, diffID digest.Digest, objs []digest.Digest) error {
	fans, byFan, err := placeholderGroups(s, objs)
	if err != nil {
		return err
	}
	data := p.DataDir(diffID)
	var g errgroup.Group
	g.SetLimit(placeholderWorkers)
	for _, fan := range fans {
		g.Go(func() error {
			_, err := makePlaceholdersIn(s, data+"/"+fan, byFan[fan])
			return err
		})
	}
	return g.Wait()
}

// placeholderGroups sorts objs by fan-out directory (the store's, objects/ laid out as
// <xx>/<62 hex>): the directories' names in order of first use, and each one's placeholders.
func placeholderGroups(s *store.Store, objs []digest.Digest) (fans []string, byFan map[string][]placeholderName, err error) {
	byFan = map[string][]placeholderName{}
	for _, d := range objs {
		name, err := s.ObjectName(d)
		if err != nil {
			return nil, nil, err
		}
		fan, base, _ := strings.Cut(name, "/")
		if _, ok := byFan[fan]; !ok {
			fans = append(fans, fan)
		}
		byFan[fan] = append(byFan[fan], placeholderName{obj: d, name: base})
	}
	return fans, byFan, nil
}

// placeholderWorkers is how many goroutines create placeholders at once: measured on a
// two-core VM, four overlap the file system's waits without queueing on its locks.
const placeholderWorkers = 4

// placeholderName is an object and the name of its placeholder in its fan-out directory.
type placeholderName struct {
	obj  digest.Digest
	name string
}

// makePlaceholdersIn makes directory dir and the empty read-only files phs in it whose objects
// the store lacks, keeping those that exist; it returns the objects it made none for because the
// store holds them. The files are made relative to the directory, so that each costs the kernel
// no walk of the store's path.
func makePlaceholdersIn(s *store.Store, dir string, phs []placeholderName) (stored map[digest.Digest]bool, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	dfd, err := unix.Open(dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: dir, Err: err}
	}
	defer unix.Close(dfd)
	stored = map[digest.Digest]bool{}
	for _, ph := range phs {
		if s.HasObject(ph.obj) {
			stored[ph.obj] = true
			continue
		}
		// mknod makes the empty file in one call, with no open file to close.
		err := unix.Mknodat(dfd, ph.name, unix.S_IFREG|0o444, 0)
		if errors.Is(err, unix.EEXIST) {
			continue
		}
		if err != nil {
			return nil, &fs.PathError{Op: "mknod", Path: filepath.Join(dir, ph.name), Err: err}
		}
	}
	return stored, nil
}

// PlaceholderPath is where object d's placeholder of a pending layer lives.
func (p *Pending) PlaceholderPath(s *store.Store, diffID, d digest.Digest) (string, error) {
	name, err := s.ObjectName(d)
	if err != nil {
		return "", err
	}
	return filepath.Join(p.DataDir(diffID), name), nil
}
