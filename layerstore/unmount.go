package layerstore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
)

// Mounts lists the per-layer composefs mounts in place (directories under the state's mnt/),
// whoever made them: this server, or one before a restart.
func (l *Layers) Mounts() ([]string, error) {
	ents, err := os.ReadDir(filepath.Join(l.opts.State, dirMounts))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	var out []string
	for _, e := range ents {
		dir := filepath.Join(l.opts.State, dirMounts, e.Name())
		if _, ok, err := mount.Find(dir); err != nil {
			return nil, fmt.Errorf("layer store: %w", err)
		} else if ok {
			out = append(out, dir)
		}
	}
	return out, nil
}

// Unmount takes down the per-layer mount at dir (one Mounts lists, or a Layer's Diff) when its
// user no longer needs it, and removes its mount point and composefs image. The store's record
// of the mount then goes stale (Uses drops it), so gc frees the layer once nothing else keeps
// it; a later Lookup or MountLayer pulls and mounts it again. A mount something still stacks
// on (an overlay) is busy: it stays, and the error is errdefs.ErrInUse. Checkout diffs
// (DiffCheckout) are not mounts: nothing is done for them.
func (l *Layers) Unmount(dir string) error {
	dgst := digest.NewDigestFromEncoded(digest.SHA256, filepath.Base(dir))
	if filepath.Dir(filepath.Clean(dir)) != filepath.Join(l.opts.State, dirMounts) || dgst.Validate() != nil {
		return fmt.Errorf("layer store: %s is not a layer mount of %s: %w", dir, l.opts.State, errdefs.ErrInvalid)
	}
	l.dirs.Lock()
	defer l.dirs.Unlock()
	if _, ok, err := mount.Find(dir); err != nil || !ok {
		return err
	}
	if err := mount.Unmount(dir); err != nil {
		if errors.Is(err, unix.EBUSY) {
			return fmt.Errorf("layer store: %w: %w", err, errdefs.ErrInUse)
		}
		return fmt.Errorf("layer store: %w", err)
	}
	l.forget(dir)
	os.Remove(dir)
	l.removeImages(dgst)
	l.opts.Log.Info("layer unmounted", "diffID", dgst, "dir", dir)
	return nil
}

// forget drops what Lookup remembers of the layer at dir: gc may free the layer now, and a
// later lookup must resolve its image again rather than mount what may be gone. (A resolution
// within ResolveTTL is still reused; l.mu is held during pulls, and Unmount must not wait.)
func (l *Layers) forget(dir string) {
	l.smu.Lock()
	defer l.smu.Unlock()
	for k, c := range l.served {
		if c.layer.Diff == dir {
			delete(l.served, k)
		}
	}
}

// DetachStalePending detaches the pending layers' mounts an earlier server left under the
// state's pending/ (killed between a pull's completion and the grace that detaches them, or
// mid-pull) and removes their directories and temporary composefs images. Servers call it at
// start, before serving: a lookup mounts a pending layer afresh, over the fill service now
// running, and a complete one is looked up as complete. Containers still running on a left
// mount keep it (MNT_DETACH). Only mountinfo is read, never the mounts themselves, so a mount
// whose fill service died cannot hang it. Anything there that is not a composefs mount of
// Kura's is left, and reported.
func (l *Layers) DetachStalePending() error {
	dir := filepath.Join(l.opts.State, dirPending)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	if real, err := filepath.EvalSymlinks(dir); err == nil {
		dir = real
	} else if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	l.dirs.Lock()
	defer l.dirs.Unlock()
	entries, err := mountinfo.Read("self")
	if err != nil {
		return fmt.Errorf("layer store: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if filepath.Dir(e.Point) != dir {
			continue
		}
		if e.FSType != mount.FSType || e.Source != mount.Source {
			errs = append(errs, fmt.Errorf("layer store: %s is a %s mount, not a pending layer's: %w", e.Point, e.FSType, errdefs.ErrAlreadyExists))
			continue
		}
		if err := unix.Unmount(e.Point, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			errs = append(errs, fmt.Errorf("layer store: detaching the stale pending mount %s: %w", e.Point, err))
			continue
		}
		delete(l.ownMnts, e.Point)
		l.opts.Log.Info("stale pending layer's mount detached", "dir", e.Point)
	}
	return errors.Join(append(errs, removeUnmounted(dir))...)
}

// removeUnmounted removes what is left in dir once its mounts are detached: empty mount points
// and the temporary composefs images of mounts a crash interrupted. A directory still mounted
// is not empty, or busy, and stays.
func removeUnmounted(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("layer store: %w", err)
	}
	for _, e := range ents {
		os.Remove(filepath.Join(dir, e.Name()))
	}
	return nil
}
