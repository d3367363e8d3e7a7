package store

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// FsckReport is what fsck found (and, with repair, fixed).
type FsckReport struct {
	Objects, Layers, Images, Refs, Variants int
	// Problems are damaged, changed or dangling things; a clean store has none.
	Problems []string
	// Repaired counts problems repair fixed.
	Repaired int
	// Unrepaired are the problems repair could not fix, each saying what would.
	Unrepaired []string
	// TempFiles are leftovers of interrupted writes (or, without repair, writes in progress).
	TempFiles int
	// LegacyVariants are hardlink-checkout variants named as older versions named them (by key
	// alone): their object, hence their content, cannot be checked. New checkouts do not use them.
	LegacyVariants int
	// Unreadable counts variants fsck --deep could not open (e.g. mode 0 without root).
	Unreadable int
	// LegacyLayers counts layers recorded without an object list (before lists existed): not
	// damage, their readers decode the TOC instead. Repair, and gc, write their lists.
	LegacyLayers int
	// TotalsNote says why the store usage totals (what df reports) were not compared, when they
	// were not: unknown (missing, or a placement of objects in progress or interrupted; not
	// damage: the next gc, or repair, writes them) or changing while fsck walked the objects.
	TotalsNote string
}

// Clean says whether fsck found no problems.
func (r FsckReport) Clean() bool { return len(r.Problems) == 0 }

// Refetcher restores the missing objects of layer diffID of img from where img came from
// (Image.Source), e.g. by pulling the layer's blob again and importing it. It runs under the
// exclusive lock held through s, so it writes through s without locking.
type Refetcher func(ctx context.Context, s *Store, img Image, diffID digest.Digest) error

// FsckOptions select what Fsck checks and whether it repairs.
type FsckOptions struct {
	// Repair removes what is damaged and derived (objects whose content changed, changed
	// variants, stray and temp files) and restores missing objects through Refetch. It never
	// removes the name of an image that exists, nor the image or its layers' records.
	Repair bool
	// Deep re-hashes every hardlink-checkout variant too (its content must hash to its object).
	Deep bool
	// Refetch, if set, is how repair restores a layer's missing objects.
	Refetch Refetcher
}

// Fsck is FsckWith with only Repair set.
func (s *Store) Fsck(ctx context.Context, repair bool) (FsckReport, error) {
	return s.FsckWith(ctx, FsckOptions{Repair: repair})
}

// FsckWith re-hashes every object and checks every reference: refs → images → layers → objects,
// and the hardlink-checkout variants. Without Repair it takes the shared lock and changes
// nothing; with Repair it takes the exclusive lock (see FsckOptions).
func (s *Store) FsckWith(ctx context.Context, opts FsckOptions) (FsckReport, error) {
	var unlock func()
	var x *Exclusive // only with repair: removals need the exclusive lock
	var err error
	if opts.Repair {
		if x, err = s.Lock(ctx); err == nil {
			unlock = x.Unlock
		}
	} else {
		unlock, err = s.RLock(ctx)
	}
	if err != nil {
		return FsckReport{}, err
	}
	defer unlock()
	f := &fsck{s: s, x: x, opts: opts}
	for _, step := range []func(context.Context) error{f.objects, f.variants, f.records, f.imageSummaries, f.lazy, f.temps, f.totals} {
		if err := step(ctx); err != nil {
			return f.r, err
		}
	}
	return f.r, nil
}

// fsck is one run's state.
type fsck struct {
	s    *Store
	x    *Exclusive // nil unless repairing
	opts FsckOptions
	// mu guards r: the directory walk and the hashers' reports run on different goroutines.
	mu sync.Mutex
	r  FsckReport
}

func (f *fsck) problem(format string, args ...any) {
	f.r.Problems = append(f.r.Problems, fmt.Sprintf(format, args...))
}

// unrepaired records a problem repair leaves, with what would fix it.
func (f *fsck) unrepaired(format string, args ...any) {
	if f.opts.Repair {
		f.r.Unrepaired = append(f.r.Unrepaired, fmt.Sprintf(format, args...))
	}
}

// fix counts a repair, or records why it failed.
func (f *fsck) fix(what string, err error) {
	if err == nil {
		f.r.Repaired++
	} else {
		f.unrepaired("%s: %v", what, err)
	}
}

// stray reports a file that has no business where it is; repair removes it.
func (f *fsck) stray(p string) {
	f.problem("stray file %s", p)
	if f.opts.Repair {
		f.fix("removing "+p, os.RemoveAll(p))
	}
}

// objects re-hashes every object against its name. Repair removes a damaged one (its bytes are
// wrong; records stay, and records' step restores it where it can).
func (f *fsck) objects(ctx context.Context) error {
	produce := func(yield func(hashJob)) error {
		return f.fanOut(f.s.ObjectsDir(), yield, func(fan string, e fs.DirEntry, p string) (hashJob, bool) {
			want, ok := objectFromName(fan, e.Name())
			if !ok || !e.Type().IsRegular() {
				f.stray(p)
				return hashJob{}, false
			}
			f.r.Objects++
			return hashJob{path: p, want: want}, true
		})
	}
	err := hashEach(ctx, produce, func(j hashJob) {
		f.mu.Lock()
		defer f.mu.Unlock()
		if j.got == j.want {
			return
		}
		f.problem("object %s is damaged: content hashes to %s", j.want, j.got)
		if f.opts.Repair {
			f.fix("removing damaged object "+j.want.String(), os.Remove(j.path))
		}
	})
	if err != nil {
		return fmt.Errorf("fsck: %w", err)
	}
	return nil
}

// variants checks the hardlink-checkout copies: each must be a regular file of its object's
// size, and with Deep its content must hash to its object. Repair removes a changed one: it is
// a cache, and checkouts that link to it keep their inode.
func (f *fsck) variants(ctx context.Context) error {
	produce := func(yield func(hashJob)) error {
		return f.fanOut(filepath.Join(f.s.root, dirVariants), yield, func(fan string, e fs.DirEntry, p string) (hashJob, bool) {
			obj, ok := parseVariantName(fan, e.Name())
			if !e.Type().IsRegular() || (!ok && !isLegacyVariant(fan, e.Name())) {
				f.stray(p)
				return hashJob{}, false
			}
			f.r.Variants++
			if !ok {
				f.r.LegacyVariants++
				return hashJob{}, false
			}
			if info, err := f.s.Stat(ctx, obj); err == nil {
				if fi, err := e.Info(); err == nil && fi.Size() != info.Size {
					f.changedVariant(p, fmt.Sprintf("%d bytes, its object %s has %d", fi.Size(), obj, info.Size))
					return hashJob{}, false
				}
			}
			return hashJob{path: p, want: obj, variant: true}, f.opts.Deep
		})
	}
	err := hashEach(ctx, produce, func(j hashJob) {
		f.mu.Lock()
		defer f.mu.Unlock()
		switch {
		case j.unreadable:
			f.r.Unreadable++
		case j.got != j.want:
			f.changedVariant(j.path, "content hashes to "+j.got.String()+", not to its object "+j.want.String())
		}
	})
	if err != nil {
		return fmt.Errorf("fsck: %w", err)
	}
	return nil
}

func (f *fsck) changedVariant(p, why string) {
	f.problem("variant %s was changed (written through a hardlink checkout?): %s", p, why)
	if f.opts.Repair {
		f.fix("removing changed variant "+p, os.Remove(p))
	}
}

// isLegacyVariant: variants/xx/<62 hex>, the name before variants carried their object.
func isLegacyVariant(fan, name string) bool {
	_, ok := objectFromName(fan, name)
	return ok
}

// fanOut calls fn, under f.mu, for every entry of every two-hex-digit directory under base, and
// yields the job fn returns (outside the lock: yield waits for the hashers, whose reports take
// it). Anything else directly under base is stray.
func (f *fsck) fanOut(base string, yield func(hashJob), fn func(fan string, e fs.DirEntry, p string) (hashJob, bool)) error {
	fans, err := os.ReadDir(base)
	if err != nil {
		return err
	}
	for _, fan := range fans {
		fp := filepath.Join(base, fan.Name())
		if !fan.IsDir() || !isFan(fan.Name()) {
			f.mu.Lock()
			f.stray(fp)
			f.mu.Unlock()
			continue
		}
		ents, err := os.ReadDir(fp)
		if err != nil {
			return err
		}
		for _, e := range ents {
			f.mu.Lock()
			j, ok := fn(fan.Name(), e, filepath.Join(fp, e.Name()))
			f.mu.Unlock()
			if ok {
				yield(j)
			}
		}
	}
	return nil
}

// hashJob is one file to re-hash; got (or unreadable) is filled in by hashEach.
type hashJob struct {
	path       string
	want, got  digest.Digest
	variant    bool
	unreadable bool
}

// hashEach hashes the files produce yields, one worker per core (sha256 runs at about the speed
// a disk reads, so one core would leave the other idle on a cached or fast store), and calls
// report with each result, on the caller's goroutine while produce runs on another. It streams:
// files are hashed while the directories are still being listed, each through a fixed buffer, so
// memory does not grow with the store.
func hashEach(ctx context.Context, produce func(yield func(hashJob)) error, report func(hashJob)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	jobs, results := make(chan hashJob, 64), make(chan hashJob, 64)
	var perr error
	go func() {
		defer close(jobs)
		perr = produce(func(j hashJob) {
			select {
			case jobs <- j:
			case <-ctx.Done():
			}
		})
	}()
	var wg sync.WaitGroup
	errs := make([]error, runtime.GOMAXPROCS(0))
	for w := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 1<<20)
			for j := range jobs {
				if ctx.Err() != nil {
					continue // drain, so the producer ends
				}
				got, err := hashFile(j.path, buf)
				switch {
				case err == nil:
					j.got = got
				case j.variant && errors.Is(err, fs.ErrPermission):
					j.unreadable = true
				default:
					errs[w] = err
					cancel()
					continue
				}
				results <- j
			}
		}()
	}
	go func() { wg.Wait(); close(results) }()
	for j := range results {
		report(j)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	if perr != nil {
		return perr
	}
	return ctx.Err()
}

func hashFile(p string, buf []byte) (digest.Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	// The struct hides os.File's WriterTo, which would not use buf.
	if _, err := io.CopyBuffer(h, struct{ io.Reader }{f}, buf); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

// records checks layers, images and refs. Repair restores a layer's missing objects through
// Refetch; it never removes a layer or image record, nor a ref to an image that exists: what it
// cannot restore it reports, with the way to restore or drop it.
func (f *fsck) records(ctx context.Context) error {
	refs, names, err := f.refs()
	if err != nil {
		return err
	}
	images, users, err := f.imageRecords(ctx)
	if err != nil {
		return err
	}
	goodLayer, err := f.layers(ctx, images, users, names)
	if err != nil {
		return err
	}
	goodImage := map[digest.Digest]bool{}
	for _, id := range sortedKeys(images) {
		f.r.Images++
		err := f.s.checkImage(ctx, id, goodLayer)
		if err == nil {
			goodImage[id] = true
			continue
		}
		f.problem("image %s: %v", id, err)
		f.unrepaired("image %s (%s): %v: pull or import it again, or drop it with kura rmi", id, nameList(names[id]), err)
	}
	for _, name := range sortedKeys(refs) {
		f.r.Refs++
		ref := refs[name]
		switch {
		case ref.err != nil:
			f.problem("ref %s: %v", ref.file, ref.err)
			f.unrepaired("ref %s: %v: remove %s", ref.file, ref.err, filepath.Join(f.s.root, dirRefs, ref.file))
		case images[ref.id] == nil && !f.s.imageExists(ref.id):
			// A name of nothing: no image is lost by removing it, and gc cannot run while it
			// stays. The only names repair removes.
			f.problem("ref %s: image %s: %v", name, ref.id, errdefs.ErrNotFound)
			if f.opts.Repair {
				f.fix("removing ref "+name, os.Remove(filepath.Join(f.s.root, dirRefs, ref.file)))
			}
		case !goodImage[ref.id]:
			f.problem("ref %s: image %s is damaged", name, ref.id)
		}
	}
	return nil
}

type refRecord struct {
	file string
	id   digest.Digest
	err  error
}

// refs reads every ref, keyed by name (or by file name when it does not unescape), and the names
// of each image.
func (f *fsck) refs() (map[string]refRecord, map[digest.Digest][]string, error) {
	ents, err := os.ReadDir(filepath.Join(f.s.root, dirRefs))
	if err != nil {
		return nil, nil, err
	}
	refs := map[string]refRecord{}
	names := map[digest.Digest][]string{}
	for _, e := range ents {
		rec := refRecord{file: e.Name()}
		name, err := url.PathUnescape(e.Name())
		if err == nil {
			rec.id, err = f.s.Ref(context.Background(), name)
		}
		if rec.err = err; err != nil {
			name = e.Name()
		} else {
			names[rec.id] = append(names[rec.id], name)
		}
		refs[name] = rec
	}
	return refs, names, nil
}

// imageRecords reads every image record (nil where unreadable: checkImage reports it) and which
// images use each layer.
func (f *fsck) imageRecords(ctx context.Context) (map[digest.Digest]*Image, map[digest.Digest][]*Image, error) {
	ids, err := f.s.Images(ctx)
	if err != nil {
		return nil, nil, err
	}
	images := map[digest.Digest]*Image{}
	users := map[digest.Digest][]*Image{}
	for _, id := range ids {
		img, err := f.s.Image(ctx, id)
		if err != nil {
			images[id] = nil
			continue
		}
		images[id] = &img
		for _, l := range img.Layers {
			users[l] = append(users[l], &img)
		}
	}
	return images, users, nil
}

// layers checks every layer record; with repair, a layer whose record is good but whose objects
// are missing is re-fetched through an image that uses it.
func (f *fsck) layers(ctx context.Context, images map[digest.Digest]*Image, users map[digest.Digest][]*Image, names map[digest.Digest][]string) (map[digest.Digest]bool, error) {
	layers, err := f.s.Layers(ctx)
	if err != nil {
		return nil, err
	}
	good := map[digest.Digest]bool{}
	for _, l := range layers {
		f.r.Layers++
		objs, missing, err := f.s.checkLayer(ctx, l)
		if err == nil {
			f.objectList(l, objs)
		}
		if err == nil && len(missing) == 0 {
			good[l] = true
			continue
		}
		if err != nil {
			f.problem("layer %s: %v", l, err)
			f.unrepaired("layer %s: %v; used by %s: pull or import them again, or drop them with kura rmi and kura gc", l, err, usedBy(users[l], names))
			continue
		}
		f.problem("layer %s: %d objects missing (first %s)", l, len(missing), missing[0])
		if !f.opts.Repair {
			continue
		}
		if ok, why := f.refetch(ctx, l, users[l]); ok {
			f.r.Repaired++
			good[l] = true
		} else {
			f.unrepaired("layer %s: %d objects missing; %s; used by %s: importing the same tar again restores them; otherwise kura rmi the names, kura gc, then pull or import again (a pull or layout import skips a layer that is recorded)", l, len(missing), why, usedBy(users[l], names))
		}
	}
	return good, nil
}

// refetch restores a layer's missing objects through the first image that can fetch it.
func (f *fsck) refetch(ctx context.Context, l digest.Digest, users []*Image) (bool, string) {
	if f.opts.Refetch == nil {
		return false, "no way to re-fetch it"
	}
	var whys []string
	for _, img := range users {
		if img.Source == "" {
			whys = append(whys, fmt.Sprintf("image %s records no source", img.ID))
			continue
		}
		err := f.opts.Refetch(ctx, f.s, *img, l)
		if err == nil {
			var missing []digest.Digest
			if _, missing, err = f.s.checkLayer(ctx, l); err == nil && len(missing) > 0 {
				err = fmt.Errorf("object %s still missing: %w", missing[0], errdefs.ErrNotFound)
			}
		}
		if err == nil {
			return true, ""
		}
		whys = append(whys, fmt.Sprintf("re-fetching from %s failed: %v", img.Source, err))
	}
	if len(whys) == 0 {
		return false, "no image uses it"
	}
	return false, strings.Join(whys, "; ")
}

func usedBy(imgs []*Image, names map[digest.Digest][]string) string {
	if len(imgs) == 0 {
		return "no image"
	}
	var parts []string
	for _, img := range imgs {
		parts = append(parts, fmt.Sprintf("image %s (%s)", img.ID, nameList(names[img.ID])))
	}
	return strings.Join(parts, ", ")
}

func nameList(names []string) string {
	if len(names) == 0 {
		return "no name"
	}
	sort.Strings(names)
	return "names: " + strings.Join(names, ", ")
}

func sortedKeys[K ~string, V any](m map[K]V) []K {
	keys := make([]K, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}

// temps counts temp files; repair removes them (nobody writes under the exclusive lock).
func (f *fsck) temps(context.Context) error {
	var err error
	if f.opts.Repair {
		f.r.TempFiles, err = f.x.removeTemps()
	} else {
		f.r.TempFiles, err = f.s.TempFiles()
	}
	return err
}

// checkLayer checks a layer's record (error), returns the objects its TOC names (decoded from
// the TOC itself, which fsck checks, not from the derived object list) and lists those that
// are not stored.
func (s *Store) checkLayer(ctx context.Context, l digest.Digest) ([]ObjectRef, []digest.Digest, error) {
	if _, err := s.Layer(ctx, l); err != nil {
		return nil, nil, err
	}
	entries, err := s.LayerEntries(ctx, l)
	if err != nil {
		return nil, nil, err
	}
	objs := entryObjects(entries)
	if _, err := s.LayerTarSplit(ctx, l); err != nil {
		return nil, nil, err
	}
	var missing []digest.Digest
	for _, o := range objs {
		if !s.HasObject(o.Digest) {
			missing = append(missing, o.Digest)
		}
	}
	return objs, missing, nil
}

// objectList checks a layer's object list against the objects its TOC names. A missing list
// (a layer recorded before lists existed) is counted, not a problem; a bad or disagreeing one
// is. Repair writes the list from the TOC in both cases.
func (f *fsck) objectList(l digest.Digest, want []ObjectRef) {
	got, err := f.s.readObjectList(l)
	switch {
	case errors.Is(err, errdefs.ErrNotFound):
		f.r.LegacyLayers++
		if f.opts.Repair {
			if err := f.x.writeObjectList(l, want); err != nil {
				f.unrepaired("layer %s: writing object list: %v", l, err)
			}
		}
		return
	case err == nil && slices.Equal(got, want):
		return
	case err == nil:
		err = fmt.Errorf("object list names %d objects, TOC %d, or sizes differ: %w", len(got), len(want), errdefs.ErrInvalid)
	}
	f.problem("layer %s: %v", l, err)
	if f.opts.Repair {
		f.fix(fmt.Sprintf("layer %s: object list", l), f.x.writeObjectList(l, want))
	}
}

func (s *Store) imageExists(id digest.Digest) bool {
	dir, err := s.imageDir(id)
	return err == nil && exists(dir)
}

func (s *Store) checkImage(ctx context.Context, id digest.Digest, goodLayer map[digest.Digest]bool) error {
	stored, err := s.Image(ctx, id)
	if err != nil {
		return err
	}
	m, err := s.ImageManifest(ctx, id)
	if err != nil {
		return err
	}
	c, err := s.ImageConfig(ctx, id)
	if err != nil {
		return err
	}
	img, err := ParseImage(m, c)
	if err != nil {
		return err
	}
	if img.ID != id || stored.Config != img.Config {
		return fmt.Errorf("manifest hashes to %s: %w", img.ID, errdefs.ErrDigestMismatch)
	}
	// The record may differ from the config only as ConfigDiffIDs documents.
	if !slices.Equal(stored.ConfigLayers(), img.Layers) || len(stored.Layers) != len(img.Layers) {
		return fmt.Errorf("record lists DiffIDs %v, config %v: %w", stored.ConfigLayers(), img.Layers, errdefs.ErrDigestMismatch)
	}
	for _, l := range stored.Layers {
		if !goodLayer[l] {
			return fmt.Errorf("layer %s is missing or damaged: %w", l, errdefs.ErrNotFound)
		}
	}
	return nil
}

// TempFiles counts the files under tmp/: writes in progress, or leftovers of interrupted ones.
// Directories do not count: the temp object directories (tmp/o-N) stay.
func (s *Store) TempFiles() (int, error) {
	n := 0
	err := filepath.WalkDir(filepath.Join(s.root, dirTmp), func(_ string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			n++
		}
		return err
	})
	return n, err
}
