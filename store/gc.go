package store

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/opencontainers/go-digest"
)

// GCResult counts what gc removed.
type GCResult struct {
	Images, Layers, Objects, TempFiles, Variants int
	// Composefs counts cached composefs images of removed images.
	Composefs  int
	BytesFreed int64
}

// reach is the mark phase: everything reachable from refs and live uses.
type reach struct {
	images  map[digest.Digest]Image
	layers  map[digest.Digest]bool
	objects map[digest.Digest]bool
}

// roots are the images gc keeps: those refs name and those a live mount or checkout uses, each
// with what holds it (for messages).
func (x *Exclusive) roots(ctx context.Context) (map[digest.Digest]string, error) {
	refs, err := x.Refs(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	uses, err := x.Uses(ctx)
	if err != nil {
		return nil, fmt.Errorf("gc: %w", err)
	}
	roots := map[digest.Digest]string{}
	for name, id := range refs {
		roots[id] = "ref " + name
	}
	for _, u := range uses {
		if _, ok := roots[u.Image]; ok {
			continue
		}
		// A use of an image already gone (damage) keeps nothing; its record stays until its
		// target goes.
		if _, err := x.Image(ctx, u.Image); err == nil {
			roots[u.Image] = fmt.Sprintf("%s at %s", u.Kind, u.Target)
		}
	}
	return roots, nil
}

func (x *Exclusive) mark(ctx context.Context) (*reach, error) {
	r := &reach{images: map[digest.Digest]Image{}, layers: map[digest.Digest]bool{}, objects: map[digest.Digest]bool{}}
	roots, err := x.roots(ctx)
	if err != nil {
		return nil, err
	}
	s := x.Store
	seen := map[objKey]struct{}{} // only a new object costs a digest string
	mark := func(k objKey, _ int64) {
		if _, ok := seen[k]; !ok {
			seen[k] = struct{}{}
			r.objects[k.digest()] = true
		}
	}
	for id, by := range roots {
		img, err := s.Image(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("gc: %s: %w (run fsck)", by, err)
		}
		r.images[id] = img
		for _, l := range img.Layers {
			if r.layers[l] {
				continue
			}
			if err := x.layerObjectsBackfill(ctx, l, mark); err != nil {
				return nil, fmt.Errorf("gc: image %s: %w (run fsck)", id, err)
			}
			r.layers[l] = true
		}
	}
	return r, x.markPendingLazy(ctx, r)
}

// GC removes every image that no ref names and no live mount or checkout uses (see Uses), the
// layers and objects only such images need, all temp files, and hardlink-checkout variants no
// checkout uses any more. It takes the exclusive lock, so it waits for running imports and pulls,
// and they wait for it. Sweeping runs in reverse write order (images, then layers, then objects)
// so a crash mid-gc leaves a consistent store.
func (s *Store) GC(ctx context.Context) (GCResult, error) {
	x, err := s.Lock(ctx)
	if err != nil {
		return GCResult{}, err
	}
	defer x.Unlock()
	return x.GC(ctx)
}

// GC is Store.GC for a caller that holds the exclusive lock already.
func (x *Exclusive) GC(ctx context.Context) (GCResult, error) {
	if err := x.check(); err != nil {
		return GCResult{}, err
	}
	var res GCResult
	r, err := x.mark(ctx)
	if err != nil {
		return res, err
	}
	images, err := x.Images(ctx)
	if err != nil {
		return res, err
	}
	for _, id := range images {
		if _, ok := r.images[id]; !ok {
			if err := x.DeleteImage(ctx, id); err != nil {
				return res, err
			}
			res.Images++
		}
	}
	if res.Composefs, err = x.sweepComposefs(r); err != nil {
		return res, err
	}
	layers, err := x.Layers(ctx)
	if err != nil {
		return res, err
	}
	for _, l := range layers {
		if !r.layers[l] {
			if err := x.DeleteLayer(ctx, l); err != nil {
				return res, err
			}
			res.Layers++
		}
	}
	dead, err := x.deadObjects(ctx, r)
	if err != nil {
		return res, err
	}
	if err := x.sweepObjects(ctx, dead, &res); err != nil {
		return res, err
	}
	// Also when this gc deleted no layer: a gc killed after deleting layers left the index
	// naming them, and its retry must leave what an uninterrupted gc leaves.
	x.pruneChunkIndex(r)
	n, err := x.removeTemps()
	if err != nil {
		return res, err
	}
	res.TempFiles = n
	if n, err = x.removeLazyLeftovers(); err != nil {
		return res, err
	}
	res.TempFiles += n
	v, freed, err := x.sweepVariants()
	res.Variants, res.BytesFreed = v, res.BytesFreed+freed
	if err != nil {
		return res, err
	}
	return res, nil
}

// sweepComposefs removes cached composefs images of images that are gone, and anything else in
// the cache directory.
func (x *Exclusive) sweepComposefs(r *reach) (int, error) {
	dir := filepath.Join(x.root, dirCompose)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range ents {
		hex, ok := strings.CutSuffix(e.Name(), ".cfs")
		if _, live := r.images[digest.NewDigestFromEncoded(digest.SHA256, hex)]; ok && live {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return n, fmt.Errorf("removing cached composefs image: %w", err)
		}
		n++
	}
	return n, nil
}

// removeTemps deletes every temp file and directory under tmp/, keeping the temp object
// directories (tmp/o-N), which an ingest of this process may expect. Only under the exclusive
// lock: then no ingest is running and every temp file is a leftover of a crash. It returns how
// many files it removed.
func (x *Exclusive) removeTemps() (int, error) {
	if err := x.check(); err != nil {
		return 0, err
	}
	n, err := x.TempFiles()
	if err != nil {
		return 0, err
	}
	dir := filepath.Join(x.root, dirTmp)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, err
	}
	for _, e := range ents {
		p := filepath.Join(dir, e.Name())
		if e.IsDir() && strings.HasPrefix(e.Name(), tempShardPrefix) {
			if err := removeContents(p); err != nil {
				return 0, fmt.Errorf("removing temp files: %w", err)
			}
			continue
		}
		os.Chmod(p, 0o700) // committed-dir leftovers are read-only
		if err := os.RemoveAll(p); err != nil {
			return 0, fmt.Errorf("removing temp file: %w", err)
		}
	}
	return n, nil
}

func removeContents(dir string) error {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// sweepVariants removes checkout variants whose only link is the store's own.
func (x *Exclusive) sweepVariants() (int, int64, error) {
	dir := filepath.Join(x.root, dirVariants)
	var n int
	var freed int64
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && st.Nlink == 1 {
			if err := os.Remove(p); err == nil {
				n++
				freed += fi.Size()
			}
		}
		return nil
	})
	return n, freed, err
}

// ImageUsage is one image's share of the store.
type ImageUsage struct {
	Image Image
	Names []string
	// Logical is the sum of the image's regular file sizes over all its layers.
	Logical int64
	// Unique is the size of the objects no other image uses.
	Unique int64
}

// Usage is what df reports.
type Usage struct {
	Images []ImageUsage
	// Logical is the sum of every image's logical size.
	Logical int64
	// Physical is the bytes the store holds: objects plus metadata files (apparent sizes).
	Physical      int64
	ObjectBytes   int64
	MetadataBytes int64
	Objects       int
	// Allocated is the disk objects and metadata take (st_blocks): holes (zeros chunks) cost
	// nothing, and small files take a whole block.
	Allocated       int64
	ObjectAllocated int64
}

// DedupRatio is Logical / Physical.
func (u Usage) DedupRatio() float64 {
	if u.Physical == 0 {
		return 0
	}
	return float64(u.Logical) / float64(u.Physical)
}

// UsageOption selects what Usage computes beyond the totals and the image list.
type UsageOption func(*usageOptions)

type usageOptions struct{ unique bool }

// WithUniqueBytes makes Usage compute each image's Unique bytes (df -v): that reads every
// layer's object list, a cost that grows with the images' objects, not the store's.
func WithUniqueBytes() UsageOption { return func(o *usageOptions) { o.unique = true } }

// Usage computes df figures: the object totals maintained in usageFile (a walk of objects/ only
// when they are missing or damaged), the metadata files' sizes, and the images with their logical
// sizes from the records. It takes the shared lock.
func (s *Store) Usage(ctx context.Context, opts ...UsageOption) (Usage, error) {
	var o usageOptions
	for _, opt := range opts {
		opt(&o)
	}
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Usage{}, err
	}
	defer unlock()
	var u Usage
	t, _, err := s.totals(ctx)
	if err != nil {
		return u, err
	}
	u.Objects, u.ObjectBytes, u.ObjectAllocated = int(t.Objects), t.Bytes, t.Allocated
	u.MetadataBytes, u.Allocated = s.metadataBytes()
	u.Physical = u.ObjectBytes + u.MetadataBytes
	u.Allocated += u.ObjectAllocated

	if u.Images, err = s.imageUsages(ctx); err != nil {
		return u, err
	}
	for _, iu := range u.Images {
		u.Logical += iu.Logical
	}
	if !o.unique {
		return u, nil
	}
	return u, s.uniqueBytes(ctx, u.Images)
}

// metadataBytes sums the apparent and allocated sizes of everything but objects: records, refs,
// the composefs images, the chunk index (with its journal) and the image summaries. It costs a stat per record, which
// grows with the images and layers, not with their objects.
func (s *Store) metadataBytes() (size, alloc int64) {
	for _, d := range []string{dirLayers, dirImages, dirRefs, dirCompose, chunkIndexFile, chunkJournalFile, imageSummariesFile} {
		filepath.WalkDir(filepath.Join(s.root, d), func(_ string, e os.DirEntry, err error) error {
			if err == nil && !e.IsDir() {
				if fi, err := e.Info(); err == nil {
					size += fi.Size()
					alloc += allocated(fi)
				}
			}
			return nil
		})
	}
	return size, alloc
}

// uniqueBytes sets each image's Unique: the sizes of the objects no other image's layers name.
// Objects are keyed raw and read from the layers' object lists (see layerObjectKeys), so the
// cost is the lists' bytes and one map entry per reference, with no digest strings and no TOC
// decoded.
func (s *Store) uniqueBytes(ctx context.Context, imgs []ImageUsage) error {
	type use struct {
		image int // the first image that names the object
		size  int64
		many  bool // another image names it too
	}
	// Each layer is read once: a layer two images share makes all its objects shared.
	var layers []digest.Digest
	users := map[digest.Digest][]int{}
	for i, iu := range imgs {
		for _, l := range iu.Image.Layers {
			if _, ok := users[l]; !ok {
				layers = append(layers, l)
			}
			if u := users[l]; len(u) == 0 || u[len(u)-1] != i {
				users[l] = append(u, i)
			}
		}
	}
	uses := map[objKey]*use{}
	for _, l := range layers {
		i, shared := users[l][0], len(users[l]) > 1
		_, err := s.layerObjectKeys(ctx, l, func(k objKey, size int64) {
			if u, ok := uses[k]; !ok {
				uses[k] = &use{image: i, size: size, many: shared}
			} else if shared || u.image != i {
				u.many = true
			}
		})
		if err != nil {
			return err
		}
	}
	for _, u := range uses {
		if !u.many {
			imgs[u.image].Unique += u.size
		}
	}
	return nil
}

// imageUsages lists the images with their names and logical sizes (Unique left zero), from
// the records, under a lock the caller holds.
func (s *Store) imageUsages(ctx context.Context) ([]ImageUsage, error) {
	names, err := s.NamesByImage(ctx)
	if err != nil {
		return nil, err
	}
	ids, err := s.Images(ctx)
	if err != nil {
		return nil, err
	}
	layerSize := map[digest.Digest]int64{}
	out := make([]ImageUsage, 0, len(ids))
	for _, id := range ids {
		img, err := s.Image(ctx, id)
		if err != nil {
			return nil, err
		}
		iu := ImageUsage{Image: img, Names: names[id]}
		if iu.Logical, err = s.logicalSize(ctx, img, layerSize); err != nil {
			return nil, err
		}
		out = append(out, iu)
	}
	return out, nil
}
