package layerstore

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/composefs/storeimage"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

// Lazy serves layers before they are downloaded: kura snapshotter --lazy's remote path and
// kura layer-store serve --lazy share one (cmd/kura's lazyLayers).
type Lazy interface {
	// LookupLazy serves layer dgst of image ref. When the store holds the layer and no pending
	// pull of ref is being served, it is the complete layer's mount (pending false). Otherwise a
	// lazy pull of ref is begun or resumed, its fill service runs in the background, and once
	// its placeholders are served the pending layer's mount is returned (pending true). The
	// Layer has its DiffID and Diff, and, for the layer store, Desc, TarSize and Source.
	LookupLazy(ctx context.Context, ref string, dgst digest.Digest) (l *Layer, pending bool, err error)
}

// SetLazy makes the FUSE server's lookups lazy (kura layer-store serve --lazy): a layer is
// answered as soon as its lazy pull can be mounted, its diff pointing at the pending layer's
// mount until the pull completes and at the complete layer's mount from then on. Pending
// mounts are composefs mounts: it needs DiffComposefs.
func (l *Layers) SetLazy(z Lazy) error {
	if l.opts.Diff != DiffComposefs {
		return fmt.Errorf("layer store: lazy pulls need --diff composefs, not %s: %w", l.opts.Diff, errdefs.ErrInvalid)
	}
	l.lazy = z
	return nil
}

// lookupLazy is lookupEarly with a Lazy: what it serves, with the info containers/storage keeps.
// Nothing is remembered here: the Lazy resolves a (ref, digest) once, and every resolution of
// diff asks it again (lazyTarget).
func (l *Layers) lookupLazy(ctx context.Context, ref string, dgst digest.Digest) (*Layer, error) {
	layer, pending, err := l.lazy.LookupLazy(ctx, ref, dgst)
	if err != nil {
		return nil, err
	}
	if layer.Info, err = infoOf(layer); err != nil {
		return nil, err
	}
	layer.lazyRef, layer.lazyDigest = ref, dgst
	l.opts.Log.Info("layer served", "ref", ref, "digest", dgst, "diffID", layer.DiffID, "dir", layer.Diff, "pending", pending)
	return layer, nil
}

// lazyTarget is DiffTarget of a layer a Lazy served: the pending layer's mount while its pull
// is pending, the complete layer's once complete (new containers stack on it; those running
// keep the pending mount, which stays right).
//
// If the Lazy fails (the registry unreachable after a restart), the layer is looked up as
// without --lazy, which serves the image the store holds under that name.
func (l *Layers) lazyTarget(ctx context.Context, layer *Layer) (string, error) {
	nl, _, err := l.lazy.LookupLazy(ctx, layer.lazyRef, layer.lazyDigest)
	if err != nil {
		l.opts.Log.Warn("lazy lookup failed; looking the layer up as without --lazy", "ref", layer.lazyRef, "digest", layer.lazyDigest, "err", err)
		// Lookup, not lookupEarly: this resolution is a use, it must get the layer mounted.
		if nl, err = l.Lookup(ctx, layer.lazyRef, layer.lazyDigest); err != nil {
			return "", err
		}
	}
	if nl.DiffID != layer.DiffID {
		return "", fmt.Errorf("layer store: %s of %s is now layer %s, was %s: %w", layer.lazyDigest, layer.lazyRef, nl.DiffID, layer.DiffID, errdefs.ErrInvalid)
	}
	return nl.Diff, nil
}

// ReleasePending detaches the pending mounts of the layers diffIDs, whose lazy pull completed:
// lookups now answer the complete layers' mounts. Containers running on a pending mount keep it
// (their overlay holds it), and it stays right for them: every placeholder was filled and every
// object stored before the pull completed. The directory goes too, so that a mount racing with
// this (a diff resolved just before) fails rather than stack on an empty directory.
func (l *Layers) ReleasePending(diffIDs []digest.Digest) {
	l.dirs.Lock()
	defer l.dirs.Unlock()
	for _, d := range diffIDs {
		target := l.mountPoint(dirPending, d)
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			l.opts.Log.Warn("pending layer's mount not detached", "dir", target, "err", err)
			continue
		}
		delete(l.ownMnts, target)
		os.Remove(target)
		l.opts.Log.Info("pending layer's mount detached: its pull is complete", "dir", target)
	}
}

// overFUSE reports whether a FUSE file system is mounted at dir (a FUSE fill service's).
func overFUSE(dir string) bool {
	entries, err := mountinfo.Read("self")
	if err != nil {
		return false
	}
	e, ok := mountinfo.Top(entries, dir)
	return ok && strings.HasPrefix(e.FSType, "fuse")
}

// dirPending holds the mounts of layers of pending lazy pulls: pending/<hex of DiffID>, apart
// from mnt/ (a complete layer's mount records a use; these cannot, there is no layer record).
const dirPending = "pending"

// pendingLayer is the store as the composefs build of one pending layer reads it: its entries
// from the pending pull's TOC, and objects the store lacks are placeholders.
type pendingLayer struct {
	*store.Store
	p      *lazy.Pending
	diffID digest.Digest
}

func (pl pendingLayer) LayerEntries(ctx context.Context, d digest.Digest) ([]layerfs.Entry, error) {
	if d != pl.diffID {
		return nil, fmt.Errorf("layer %s is not the pending layer %s: %w", d, pl.diffID, errdefs.ErrNotFound)
	}
	return pl.p.Entries(d)
}

func (pl pendingLayer) VerityDigests(ctx context.Context, d digest.Digest) (map[digest.Digest]verity.Digest, error) {
	return nil, fmt.Errorf("pending layer %s: %w", d, errdefs.ErrNotFound)
}

// OmitDigests leaves the fs-verity digests out, as for every per-layer image (layerImage): the
// placeholders have no content to digest, and the stored objects would each be read for one.
func (pl pendingLayer) OmitDigests() bool { return true }

// OmitInline: a pending layer's small files are placeholders too (lazymount.pendingStore).
func (pl pendingLayer) OmitInline() bool { return true }

// PendingDir mounts one layer of a pending lazy pull alone, as composefsDir mounts a stored one
// (whiteouts escaped for the overlay stacked on it), over the store's objects and then the
// layer's placeholders: a file whose object is stored is read from objects/, any other from its
// placeholder, whose first read the fill service answers. Nothing records a use (the layer has
// no record yet: gc keeps what the pending pull needs). A mount found in place is reused. The
// composefs image is a temp file removed once mounted (the EROFS mount holds it open).
//
// A mount found that an earlier process made over a FUSE fill service is made again: the FUSE
// mount it reads placeholders through died with that process (every read of it fails), and the
// new service is mounted at the placeholder directory now.
func (l *Layers) PendingDir(ctx context.Context, p *lazy.Pending, diffID digest.Digest) (string, error) {
	l.dirs.Lock()
	defer l.dirs.Unlock()
	target := l.mountPoint(dirPending, diffID)
	if _, ok, err := mount.Find(target); err != nil {
		return "", err
	} else if ok {
		if l.ownMnts[target] || !overFUSE(p.DataDir(diffID)) {
			return target, nil
		}
		l.opts.Log.Info("pending layer's mount of an earlier server detached, to mount it over the new fill service", "dir", target)
		if err := unix.Unmount(target, unix.MNT_DETACH); err != nil {
			return "", fmt.Errorf("layer store: detaching the stale pending mount %s: %w", target, err)
		}
	}
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return "", err
	}
	defer unlock()
	entries, err := p.Entries(diffID)
	if err != nil {
		return "", pendingMountError(p, diffID, err)
	}
	root, err := storeimage.Tree(ctx, pendingLayer{l.s, p, diffID}, store.Image{ID: p.ID, Layers: []digest.Digest{diffID}})
	if err == nil {
		err = treeWhiteouts(root, entries)
	}
	if err != nil {
		return "", pendingMountError(p, diffID, err)
	}
	// The complete layer's mount point too, made now: it outlives this process and a reboot,
	// and says to a server restarted without --lazy that podman may hold this layer already
	// (servedBefore), so that its first lookup there waits for the mount.
	for _, dir := range []string{target, l.mountPoint(dirMounts, diffID)} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return "", err
		}
	}
	f, err := os.CreateTemp(filepath.Dir(target), ".cfs-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	err = composefs.WriteImage(f, root, l.imageOptions()...)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	var plan *mount.Plan
	if err == nil {
		plan, err = mount.NewPlan(f.Name(), []string{l.s.ObjectsDir(), p.DataDir(diffID)}, target)
	}
	if err == nil {
		err = mount.Mount(ctx, plan)
	}
	if err != nil {
		return "", pendingMountError(p, diffID, err)
	}
	l.ownMnts[target] = true
	l.opts.Log.Info("pending layer mounted", "diffID", diffID, "pull", p.ID, "dir", target)
	return target, nil
}

// pendingMountError explains a failed mount of a pending layer. A pull completes by removing its
// directory, placeholders included (lazy.Pending.Remove), and nothing holds that back while a
// lookup mounts one of its layers: the mount then fails on the missing placeholder directory
// (fsconfig datadir+: ENOENT). That case is ErrPendingGone, so the caller serves the complete
// layer, which the pull stored before removing its directory.
func pendingMountError(p *lazy.Pending, diffID digest.Digest, err error) error {
	if _, serr := os.Stat(p.Dir); errors.Is(serr, fs.ErrNotExist) {
		return fmt.Errorf("layer store: mounting pending layer %s: %w (%v)", diffID, ErrPendingGone, err)
	}
	return fmt.Errorf("layer store: mounting pending layer %s: %w", diffID, err)
}

// ErrPendingGone says that the pending pull of a layer being mounted completed (or was removed)
// meanwhile: look the layer up as complete.
var ErrPendingGone = fmt.Errorf("its lazy pull is no longer pending: %w", errdefs.ErrNotFound)
