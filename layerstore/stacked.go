package layerstore

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/mountinfo"
)

// Stacked images. Ten versions of an image are ten layers that share most of their files, and a
// per-layer image of each gives each container its own inodes of the same files to look up: a
// page cache cost podman's hard-linked layer directories do not pay. So a layer pulled as an
// update of another (the pull's predecessor) gets an image of what it changes only
// (composefs.DeltaTree), mounted above the other's full image in one overlay: the inodes and
// directories the versions share are looked up in one image, and cached once.
//
// A stacked image is <hex>.above-<base hex>.dense.cfs beside the full ones. The delta is taken
// from the tree of the base's image (baseTrees): the one this process wrote, or one built again
// from the stored layer and checked to write that very file, byte for byte. The writer is
// deterministic and a layer's tree is the same from its pull's entries as from its record
// (TestImageBuiltFromThePullsEntries), so any full image of the base layer shows the tree the
// delta was taken from: a stacked image is mounted above whatever full image of its base is in
// place. A stacked image whose base image is gone, or that fails to mount, gives way to a full
// one (the base image is never rebuilt under it). Only dense images are stacked (Linux 6.15 or later;
// stacking needs lowerdir+ and datadir+, 6.7).
//
// A full dense image's EROFS file system is mounted once, at mnt/<image file name> in the state
// directory (beside the layers' mounts, mnt/<hex>: cleared with them), and every overlay over
// it takes it from there: its own layer's and those of the layers stacked above it, which then
// share its inodes and dentries as well as its pages. It is detached, under l.dirs, when its
// image is removed; a mount there of an earlier file of the same name shows the same tree.

// maxDeltaShare: a delta is used when it has at most a quarter of the layer's nodes; past that
// the layer's own full image costs about as much, and becomes a base for later versions.
const maxDeltaShare = 4

// baseTrees are the trees of the last few full images written or checked (maxBaseTrees), the
// bases later versions' deltas are taken from, each while its image file is that very file.
// The trees are never modified (DeltaTree and the writer only read them).
type baseTrees struct {
	mu    sync.Mutex
	trees []baseTree // newest last
}

type baseTree struct {
	diffID digest.Digest
	root   *composefs.Node
	file   fileID
}

// maxBaseTrees bounds the trees kept: an update usually changes one layer of an image, a few at
// most; each tree is a few megabytes for a distribution's base layer.
const maxBaseTrees = 4

// fileID tells one file from another put in its place.
type fileID struct{ dev, ino uint64 }

func idOf(path string) (fileID, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return fileID{}, false
	}
	return fileID{uint64(st.Dev), st.Ino}, true
}

// remember keeps the tree a full image at path was just written from.
func (b *baseTrees) remember(diffID digest.Digest, root *composefs.Node, path string) {
	if id, ok := idOf(path); ok {
		b.set(diffID, root, id)
	}
}

func (b *baseTrees) set(diffID digest.Digest, root *composefs.Node, id fileID) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.trees = slices.DeleteFunc(b.trees, func(t baseTree) bool { return t.diffID == diffID })
	if len(b.trees) == maxBaseTrees {
		b.trees = b.trees[1:]
	}
	b.trees = append(b.trees, baseTree{diffID, root, id})
}

// tree returns the tree of base's full image at path, if it is one remembered.
func (b *baseTrees) tree(base digest.Digest, path string) *composefs.Node {
	id, ok := idOf(path)
	if !ok {
		return nil
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, t := range b.trees {
		if t.diffID == base && t.file == id {
			return t.root
		}
	}
	return nil
}

const stackedInfix = ".above-"

// stackedPath is where the image of layer diffID stacked above base's full image is kept.
func (l *Layers) stackedPath(diffID, base digest.Digest) string {
	return filepath.Join(l.opts.State, dirComposefs, diffID.Encoded()+stackedInfix+base.Encoded()+imageSuffix(true))
}

// stackedImages lists the stacked images of layer diffID ("*": of every layer) above base
// ("*": above any), with the base each names.
func (l *Layers) stackedImages(diffID, base string) (map[string]digest.Digest, error) {
	paths, err := filepath.Glob(filepath.Join(l.opts.State, dirComposefs, diffID+stackedInfix+base+imageSuffix(true)))
	if err != nil {
		return nil, err
	}
	out := map[string]digest.Digest{}
	for _, p := range paths {
		name := strings.TrimSuffix(filepath.Base(p), imageSuffix(true))
		_, hex, _ := strings.Cut(name, stackedInfix)
		if d := digest.NewDigestFromEncoded(digest.SHA256, hex); d.Validate() == nil {
			out[p] = d
		}
	}
	return out, nil
}

// stackBase is the layer whose full image a new layer's image may stack above, with that
// image's tree: prev, the layer the pull took the new one for an update of, or the base prev's
// own image stacks above. None if the base has no full image, or its tree does not write it.
func (l *Layers) stackBase(ctx context.Context, prev digest.Digest) (digest.Digest, *composefs.Node) {
	if !l.dense || prev == "" {
		return "", nil
	}
	base := prev
	if _, err := os.Stat(l.imagePath(prev)); err != nil {
		stacked, err := l.stackedImages(prev.Encoded(), "*")
		if err != nil || len(stacked) != 1 {
			return "", nil
		}
		for _, b := range stacked {
			base = b
		}
	}
	p := l.imagePath(base)
	if root := l.base.tree(base, p); root != nil {
		return base, root
	}
	root, err := l.treeOfImage(ctx, base, p)
	if err != nil {
		l.opts.Log.Info("no stacked image: the base's tree is not its image's", "base", base, "err", err)
		return "", nil
	}
	return base, root
}

// treeOfImage builds the tree of layer diffID from the stored layer and remembers it as a base
// if the image it writes is the file at p, byte for byte.
func (l *Layers) treeOfImage(ctx context.Context, diffID digest.Digest, p string) (*composefs.Node, error) {
	id, ok := idOf(p)
	if !ok {
		return nil, os.ErrNotExist
	}
	entries, err := l.s.LayerEntries(ctx, diffID)
	if err != nil {
		return nil, err
	}
	root, err := l.layerTree(ctx, diffID, entries)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cw := &compareWriter{r: bufio.NewReaderSize(f, 1<<16)}
	if err := composefs.WriteImage(cw, root, l.imageOptions()...); err != nil {
		return nil, err
	}
	if _, err := cw.r.ReadByte(); err != io.EOF {
		return nil, errors.New("the image file is longer")
	}
	if now, ok := idOf(p); !ok || now != id {
		return nil, errors.New("the image file was replaced meanwhile")
	}
	l.base.set(diffID, root, id)
	return root, nil
}

// compareWriter fails a write that differs from what r reads.
type compareWriter struct {
	r   *bufio.Reader
	buf []byte
}

func (c *compareWriter) Write(p []byte) (int, error) {
	if cap(c.buf) < len(p) {
		c.buf = make([]byte, len(p))
	}
	b := c.buf[:len(p)]
	if _, err := io.ReadFull(c.r, b); err != nil || !bytes.Equal(b, p) {
		return 0, errors.New("the image file differs")
	}
	return len(p), nil
}

// findImage returns the image a layer has: its full image, or a stacked one whose base image
// is in place (with that base). A stacked image whose base image is gone is removed.
func (l *Layers) findImage(diffID digest.Digest) (image string, base digest.Digest, ok bool) {
	p := l.imagePath(diffID)
	if _, err := os.Stat(p); err == nil {
		return p, "", true
	}
	if !l.dense {
		return "", "", false
	}
	stacked, err := l.stackedImages(diffID.Encoded(), "*")
	if err != nil {
		return "", "", false
	}
	for s, b := range stacked {
		if _, err := os.Stat(l.imagePath(b)); err == nil {
			return s, b, true
		}
		if err := os.Remove(s); err != nil && !errors.Is(err, os.ErrNotExist) {
			l.opts.Log.Warn("removing a stacked image whose base image is gone", "image", s, "err", err)
		}
	}
	return "", "", false
}

// removeImages removes the images of layer diffID once it is unmounted: its full image unless a
// stacked image stands on it, its stacked images, and then the base images they stood on that
// nothing uses any more (no mount of that layer, no other stacked image above).
func (l *Layers) removeImages(diffID digest.Digest) {
	hex := diffID.Encoded()
	if above, err := l.stackedImages("*", hex); err == nil && len(above) == 0 {
		for _, dense := range []bool{false, true} {
			p := filepath.Join(l.opts.State, dirComposefs, hex+imageSuffix(dense))
			l.detachEROFS(p)
			os.Remove(p)
		}
	}
	stacked, err := l.stackedImages(hex, "*")
	if err != nil {
		return
	}
	for s, b := range stacked {
		os.Remove(s)
		l.dropUnusedBase(b)
	}
}

// dropUnusedBase removes the full image of layer b, and detaches its shared EROFS mount, if no
// stacked image stands on it any more and its layer is not mounted. The caller holds l.dirs.
func (l *Layers) dropUnusedBase(b digest.Digest) {
	if b == "" || l.mounted(b) {
		return
	}
	if above, err := l.stackedImages("*", b.Encoded()); err != nil || len(above) > 0 {
		return
	}
	l.detachEROFS(l.imagePath(b))
	os.Remove(l.imagePath(b))
}

// erofsDir returns where the full image at image (a dense one) is mounted for overlays to
// share, mounting it there first if need be. The caller holds l.dirs.
func (l *Layers) erofsDir(image string) (string, error) {
	dir, err := filepath.Abs(filepath.Join(l.opts.State, dirMounts, filepath.Base(image)))
	if err != nil {
		return "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	if dir, err = filepath.EvalSymlinks(dir); err != nil { // as mountinfo spells it
		return "", err
	}
	entries, err := mountinfo.Read("self")
	if err != nil {
		return "", err
	}
	if e, ok := mountinfo.Top(entries, dir); ok && e.FSType == "erofs" {
		return dir, nil
	}
	return dir, mount.MountImage(image, dir)
}

// detachEROFS detaches the shared EROFS mount of the image at image, if any, and removes its
// mount point: the overlays made from it keep it. The caller holds l.dirs.
func (l *Layers) detachEROFS(image string) {
	dir := filepath.Join(l.opts.State, dirMounts, filepath.Base(image))
	for {
		if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil {
			break // EINVAL: not a mount (any more); ENOENT: no mount point
		}
	}
	os.Remove(dir)
}

// mounted says whether layer diffID's per-layer mount is in place.
func (l *Layers) mounted(diffID digest.Digest) bool {
	_, ok, err := mount.Find(l.mountPoint(dirMounts, diffID))
	return ok || err != nil
}
