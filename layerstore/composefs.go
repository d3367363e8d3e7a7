package layerstore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/store"
)

// DiffMode says what a layer's diff is.
type DiffMode string

const (
	// DiffAuto: DiffComposefs where the kernel shows escaped whiteouts (6.7 on), else DiffCheckout.
	DiffAuto DiffMode = "auto"
	// DiffCheckout: a checkout of the layer alone (see diffDir).
	DiffCheckout DiffMode = "checkout"
	// DiffComposefs: a composefs mount of the layer alone over the store's object directory.
	DiffComposefs DiffMode = "composefs"
)

const (
	dirComposefs = "composefs" // composefs/<hex of DiffID>{.cfs,.dense.cfs}: per-layer composefs images
	dirMounts    = "mnt"       // mnt/<hex of DiffID>: their mount points; mnt/<image file name>: shared EROFS mounts (stacked.go)
)

// mountPoint is where layer diffID is mounted under the state directory's dir (dirMounts for
// complete layers, dirPending for pending ones): the path a lookup answers before the mount is
// made (startLayerDir) and the one the mount is made at.
func (l *Layers) mountPoint(dir string, diffID digest.Digest) string {
	return filepath.Join(l.opts.State, dir, diffID.Encoded())
}

// composefsDir returns a composefs mount of one layer: an EROFS image of that layer's entries
// (files redirecting to the store's objects, whiteouts and opaque directories escaped so that
// overlayfs shows them to the overlay that stacks on this one, kernel 6.7 or later), mounted
// read-only, nosuid and nodev with the object directory as its data-only layer. No file of the
// layer has an inode of its own: every image and container shares the store's objects, on disk
// and in the page cache. The mount is a use of the layer (gc keeps it while mounted) and outlives the
// server: images podman made from it keep working across restarts; a mount found at start is
// reused.
func (l *Layers) composefsDir(ctx context.Context, img store.Image, diffID digest.Digest) (string, error) {
	l.dirs.Lock()
	defer l.dirs.Unlock()
	target := l.mountPoint(dirMounts, diffID)
	if _, ok, err := mount.Find(target); err != nil || ok {
		return target, err
	}
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	// The mount's use names the layer's own one-layer image, not img: it keeps this layer and
	// its objects, and nothing of the image it came in (which may be gone, or pulled without a
	// name: the containerd snapshotter's layers live exactly as long as snapshots are on them).
	// Recording it first also checks, under the lock, that the layer is still stored.
	rec, err := l.layerRecord(ctx, diffID)
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(target, 0o755); err != nil {
		return "", err
	}
	use, err := l.s.AddUse(ctx, store.Use{Kind: store.UseMount, Image: rec.ID, Target: target, FSType: mount.FSType, Source: mount.Source})
	if err != nil {
		return "", err
	}
	if err := l.mountImage(ctx, diffID, target); err != nil {
		l.s.DropUse(use)
		return "", fmt.Errorf("layer store: mounting layer %s: %w", diffID, err)
	}
	if use.ID != "" {
		e, ok, err := mount.Find(target)
		if err != nil || !ok {
			return "", errors.Join(fmt.Errorf("layer store: the mount at %s is not in mountinfo", target), err, mount.Unmount(target))
		}
		use.MountID = e.ID
		if err := l.s.UpdateUse(use); err != nil {
			return "", errors.Join(err, mount.Unmount(target))
		}
	}
	return target, nil
}

// mountImage mounts the image of layer diffID at target: a stacked one above its base's, whose
// shared EROFS mount it takes, or a full one, whose shared EROFS mount it takes or makes
// (stacked.go). A stacked image that cannot be mounted gives way to a full image. The caller
// holds l.dirs and the store's shared lock.
func (l *Layers) mountImage(ctx context.Context, diffID digest.Digest, target string) error {
	image, base, err := l.layerImage(ctx, diffID)
	if err != nil {
		return fmt.Errorf("composefs image: %w", err)
	}
	err = l.mountPlanned(ctx, image, base, target)
	if err == nil || base == "" || ctx.Err() != nil {
		return err
	}
	l.opts.Log.Warn("mounting a stacked image failed; the layer gets a full image", "diffID", diffID, "image", image, "err", err)
	if err := os.Remove(image); err != nil {
		return err
	}
	l.dropUnusedBase(base)
	if image, base, err = l.layerImage(ctx, diffID); err != nil {
		return fmt.Errorf("composefs image: %w", err)
	}
	return l.mountPlanned(ctx, image, base, target)
}

// mountPlanned mounts image (above the full image of layer base, if not "") at target.
func (l *Layers) mountPlanned(ctx context.Context, image string, base digest.Digest, target string) error {
	var opts []mount.Option
	full := image
	if base != "" {
		full = l.imagePath(base)
		opts = append(opts, mount.WithBase(full))
	}
	if l.dense { // the full image's EROFS mount is shared (stacked.go)
		shared, err := l.erofsDir(full)
		if err != nil {
			return err
		}
		if base != "" {
			opts = append(opts, mount.WithMountedImages("", shared))
		} else {
			opts = append(opts, mount.WithMountedImages(shared, ""))
		}
	}
	plan, err := mount.NewPlan(image, []string{l.s.ObjectsDir()}, target, opts...)
	if err != nil {
		return err
	}
	return mount.Mount(ctx, plan)
}

// layerImage builds (once) the composefs image of one layer, unless a pull is building it
// (layerEntries): then it waits for that one. It returns the image and, for a stacked one, the
// layer whose full image it goes above (stacked.go). The caller holds the store's shared lock.
func (l *Layers) layerImage(ctx context.Context, diffID digest.Digest) (image string, base digest.Digest, err error) {
	if err := l.awaitPrebuild(ctx, diffID); err != nil {
		return "", "", err
	}
	if image, base, ok := l.findImage(diffID); ok {
		return image, base, nil
	}
	// No fs-verity digests: overlayfs reads them only with verity=on or require, which per-layer
	// mounts do not use (mount.VerityOff: the object directory is Kura's, verified at ingest).
	// Every file's metacopy xattr is then the same value, stored once: 52 bytes less per file,
	// a layer's image about a fifth smaller, in the page cache of every container that looks its
	// files up as on disk. A per-layer mount that turns verity on must keep them.
	// The entries are decoded once, for the tree and for its whiteouts.
	entries, err := l.s.LayerEntries(ctx, diffID)
	if err != nil {
		return "", "", err
	}
	if _, err := l.writeLayerImage(ctx, diffID, "", entries); err != nil {
		return "", "", err
	}
	return l.imagePath(diffID), "", nil
}

// treeWhiteouts puts a layer's whiteouts (0/0 character devices, which the writer turns into
// overlayfs's escaped whiteouts) and opaque markers (trusted.overlay.opaque, which the writer
// escapes) into its composefs tree: the merge the tree was built from drops them. An opaque
// directory holds no whiteout: it hides everything below it already, and the writer would mark
// a directory holding whiteouts with the same xattr as its opaque mark, overwriting it. So a
// whiteout name in it is left out, and a 0/0 character device the tar has as such is removed.
func treeWhiteouts(root *composefs.Node, entries []layerfs.Entry) error {
	type whiteout struct {
		n        layername.Name
		uid, gid uint32
	}
	var whiteouts []whiteout
	var opaque []*composefs.Node
	for _, e := range entries {
		if !strings.Contains(e.Name, layername.WhiteoutPrefix) {
			continue // neither a whiteout nor an opaque marker; merge has checked the name
		}
		n, err := layername.Parse(e.Name)
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", e.Name, err)
		}
		switch n.Kind {
		case layername.Plain:
		case layername.Opaque:
			parent, err := treeDir(root, subdir(n))
			if err != nil {
				return fmt.Errorf("whiteout %s: %w", e.Name, err)
			}
			if err := parent.SetXattr(xattrOpaque, []byte("y")); err != nil {
				return err
			}
			opaque = append(opaque, parent)
		default:
			whiteouts = append(whiteouts, whiteout{n, uint32(e.UID), uint32(e.GID)})
		}
	}
	for _, d := range opaque {
		for _, c := range slices.Clone(d.Children()) {
			if c.HardlinkTo == nil && c.Mode&composefs.ModeTypeMask == composefs.ModeChar && c.Rdev == 0 {
				d.RemoveChild(c.Name())
			}
		}
	}
	for _, w := range whiteouts {
		n := w.n
		parent, err := treeDir(root, subdir(n))
		if err != nil {
			return fmt.Errorf("whiteout %s: %w", n.Target, err)
		}
		if _, opaque := parent.Xattr(xattrOpaque); opaque {
			continue
		}
		target := path.Base(n.Target)
		if parent.Lookup(target) != nil {
			continue // the layer has the file and its whiteout: the file wins, as in diffDir
		}
		wh := &composefs.Node{Mode: composefs.ModeChar, UID: w.uid, GID: w.gid, Nlink: 1}
		if err := parent.AddChild(target, wh); err != nil {
			return fmt.Errorf("whiteout %s: %w", n.Target, err)
		}
	}
	return nil
}

// xattrOpaque marks an opaque directory of the layer (escaped by the writer).
const xattrOpaque = "trusted.overlay.opaque"

// treeDir finds the directory at dir, making missing ones (0755, as tar does).
func treeDir(root *composefs.Node, dir string) (*composefs.Node, error) {
	n := root
	for _, c := range strings.Split(strings.Trim(dir, "/"), "/") {
		if c == "" {
			continue
		}
		next := n.Lookup(c)
		if next == nil {
			next = composefs.NewDir(0o755)
			if err := n.AddChild(c, next); err != nil {
				return nil, err
			}
		}
		if !next.IsDir() {
			return nil, fmt.Errorf("%s is not a directory", next.Path())
		}
		n = next
	}
	return n, nil
}

// denseKernel is the first kernel that reads a compact inode's mtime (Linux 6.15), which the
// per-layer images' dense inodes need (composefs.WithDenseInodes).
var denseKernel = [2]int{6, 15}

// kernelAtLeast says whether release is version v or later.
func kernelAtLeast(release string, v [2]int) bool {
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > v[0] || major == v[0] && minor >= v[1]
}

// xwhiteoutKernel is the first kernel whose overlayfs shows a lower overlay's escaped whiteouts
// and opaque directories to the overlay stacked on it (Linux 6.7): without it, files a layer
// deletes would reappear in containers.
var xwhiteoutKernel = [2]int{6, 7}

// checkKernel refuses composefs diffs on a kernel older than xwhiteoutKernel.
func checkKernel(release string) error {
	if !kernelAtLeast(release, xwhiteoutKernel) {
		return fmt.Errorf("layer store: composefs diffs need Linux %d.%d or later for their whiteouts (this is %s; use --diff checkout): %w",
			xwhiteoutKernel[0], xwhiteoutKernel[1], release, errdefs.ErrUnsupported)
	}
	return nil
}

func kernelRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}
