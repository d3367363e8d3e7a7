package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// The layout of pending lazy pulls (package lazy writes them; docs/design.md, Lazy pulls),
// named once here for gc and fsck, which read them, and for package lazy: gc keeps what each
// will need, as it keeps what a ref needs.
const (
	// LazyDir holds the pending pulls: lazy/<manifest hex>/.
	LazyDir = "lazy"
	// LazyRecord is a pending pull's record, lazy/<manifest hex>/pull.json.
	LazyRecord = "pull.json"
	// LazyTOC is a pending layer's TOC frame, lazy/<manifest hex>/<DiffID hex>/toc.json.zst.
	LazyTOC = "toc.json.zst"
	// LazyImage is the composefs image of a pending pull, lazy/<manifest hex>/composefs.img,
	// built while its placeholders are made (a cache: a mount builds it when it is missing).
	LazyImage = "composefs.img"
	// LazyRemovedPrefix names a pending pull being removed (renamed to lazy/.rm-* first).
	LazyRemovedPrefix = ".rm-"
)

// SyncDir fsyncs directory dir, so that the names just made in it survive a crash: for package
// lazy, which writes its pending pulls under the store's root with the store's rule.
func SyncDir(dir string) error { return syncDir(dir) }

// markPendingLazy marks, for every pending lazy pull, the stored layers of its image and the
// objects its pending layers' TOCs name (those already fetched; the others are placeholders,
// which live outside objects/ and which gc never touches). A record it cannot read stops gc: what
// it protects cannot be guessed.
func (x *Exclusive) markPendingLazy(ctx context.Context, r *reach) error {
	dirs, err := pendingLazyDirs(x.root)
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for _, dir := range dirs {
		layers, objs, err := x.pendingNeeds(ctx, dir)
		if err != nil {
			return fmt.Errorf("gc: lazy pull %s: %w (kura fsck --repair removes a pending pull that cannot be read; pull the image again)", filepath.Base(dir), err)
		}
		for _, l := range layers {
			r.layers[l] = true
		}
		for _, o := range objs {
			r.objects[o] = true
		}
	}
	return nil
}

// pendingLazyDirs lists the directories of the pending lazy pulls under root (not the .rm-*
// leftovers of completions).
func pendingLazyDirs(root string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(root, LazyDir))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var dirs []string
	for _, e := range ents {
		if _, err := digest.Parse("sha256:" + e.Name()); err != nil {
			continue // a pending pull being removed (.rm-*)
		}
		dirs = append(dirs, filepath.Join(root, LazyDir, e.Name()))
	}
	return dirs, nil
}

// pendingNeeds reads what the pending pull in dir needs kept: the layers of its image that are
// stored, and the objects of every layer of it (stored layers' lists, pending layers' TOCs). A
// record that is truncated, not JSON, or whose manifest does not hash to the directory's name is
// ErrInvalid.
func (s *Store) pendingNeeds(ctx context.Context, dir string) (layers, objs []digest.Digest, err error) {
	var rec struct {
		Manifest []byte `json:"manifest"`
		Config   []byte `json:"config"`
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := readJSON(filepath.Join(dir, LazyRecord), &rec); err != nil {
		return nil, nil, err
	}
	if digest.FromBytes(rec.Manifest).Encoded() != filepath.Base(dir) {
		return nil, nil, fmt.Errorf("pull.json: the manifest does not hash to the directory's name: %w", errdefs.ErrInvalid)
	}
	if err := json.Unmarshal(rec.Config, &cfg); err != nil {
		return nil, nil, fmt.Errorf("pull.json: config: %v: %w", err, errdefs.ErrInvalid)
	}
	for _, l := range cfg.RootFS.DiffIDs {
		if err := l.Validate(); err != nil {
			return nil, nil, fmt.Errorf("pull.json: config: DiffID %q: %w", l, errdefs.ErrInvalid)
		}
		lo, err := s.LayerObjects(ctx, l)
		if err == nil {
			layers = append(layers, l)
		} else if lo, err = pendingObjects(filepath.Join(dir, l.Encoded(), LazyTOC)); err != nil {
			return nil, nil, fmt.Errorf("layer %s is neither stored nor pending: %w", l, err)
		}
		objs = append(objs, lo...)
	}
	return layers, objs, nil
}

// lazy checks that every pending lazy pull's record and TOCs can be read (gc stops on one that
// cannot). Repair removes such a pending pull, renamed to lazy/.rm-* first as a completion
// removes one: it can never resume (its record is what it would resume from), and a mount that
// reads its placeholders keeps the files it opened. The image can be pulled again.
func (f *fsck) lazy(ctx context.Context) error {
	dirs, err := pendingLazyDirs(f.s.root)
	if err != nil {
		return err
	}
	for _, dir := range dirs {
		if _, _, err := f.s.pendingNeeds(ctx, dir); err != nil {
			if _, serr := os.Stat(dir); errors.Is(serr, fs.ErrNotExist) {
				continue // completed meanwhile (fsck without repair holds only the shared lock)
			}
			f.problem("lazy pull %s cannot be read (gc stops on it): %v", filepath.Base(dir), err)
			if f.opts.Repair {
				f.fix("removing lazy pull "+filepath.Base(dir), removeLazyDir(dir))
			}
		}
	}
	return nil
}

// removeLazyDir renames dir to a .rm-* sibling (gone from the pending pulls at once), then
// deletes it; not while a fill service holds its record's flock (package lazy, LockServe: the
// service no longer holds the store's lock between its steps).
func removeLazyDir(dir string) error {
	if f, err := os.Open(filepath.Join(dir, LazyRecord)); err == nil {
		defer f.Close()
		if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
			return fmt.Errorf("a fill service serves it (stop it first): %w", errdefs.ErrInUse)
		}
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), LazyRemovedPrefix)
	if err != nil {
		return err
	}
	if err := os.Rename(dir, filepath.Join(tmp, "x")); err != nil {
		return err
	}
	return os.RemoveAll(tmp)
}

func pendingObjects(tocPath string) ([]digest.Digest, error) {
	b, err := readZstd(tocPath, 0)
	if err != nil {
		return nil, err
	}
	toc, err := chunked.ParseTOC(b)
	if err != nil {
		return nil, err
	}
	return TOCObjects(toc)
}

// removeLazyLeftovers deletes lazy/.rm-*: a completed pull's directory that a crash left between
// its rename and its delete (package lazy, Pending.Remove), with its filled placeholders, a copy
// of the pulled layers' file data that nothing else would ever remove. Only under the exclusive
// lock: a completion renames and deletes under the shared one. It returns how many it removed.
func (x *Exclusive) removeLazyLeftovers() (int, error) {
	if err := x.check(); err != nil {
		return 0, err
	}
	dir := filepath.Join(x.root, LazyDir)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), LazyRemovedPrefix) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return n, fmt.Errorf("gc: removing a lazy pull's leftover: %w", err)
		}
		n++
	}
	return n, nil
}
