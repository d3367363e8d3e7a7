package pull

import (
	"bytes"
	"context"
	"os"
	"path"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/lazy/ldso"
	"github.com/kura-oci/kura/store/layer"
)

// Libraries fetched with a program. ld.so opens a program's interpreter and libraries, then
// theirs, one after another, and each open of a file the store lacks is a fill: a round trip
// to the registry while the program waits (dash, then ld.so and libc; libaprutil, then libexpat,
// libcrypt and libuuid). So a fill of an ELF file also fetches, before the reader goes on, the
// files ld.so will load for it that the store lacks (a script's: its #! interpreter and what that
// loads), one request per level of dependencies instead of one per library; the lazy pull does
// the same for the image's start-up program (lazyprogram.go). The files are found as ld.so finds them by default (no
// ld.so.cache, RPATH or LD_LIBRARY_PATH): PT_INTERP by its path, DT_NEEDED names in the
// machine's multiarch directories, then lib64, lib and their usr/ twins, following the image's
// symlinks. All of it is a guess made for speed: a library not found, a file that is not ELF or a
// failed fetch is only logged, and the reader's own file is served as without it.
const (
	libraryLevels = 8        // levels of libraries' libraries followed
	libraryBudget = 64 << 20 // bytes (uncompressed) one fill fetches for libraries
)

// imageFiles indexes the entries of a pull's pending layers by path, upper layers over lower.
type imageFiles struct {
	byPath map[string]imageEntry
}

type imageEntry struct {
	l *lazyLayer
	e *layerfs.Entry
}

func newImageFiles(layers []*lazyLayer) *imageFiles {
	ix := &imageFiles{byPath: map[string]imageEntry{}}
	for _, l := range layers {
		for i := range l.part.Layer.Entries {
			e := &l.part.Layer.Entries[i]
			ix.byPath[cleanPath(e.Name)] = imageEntry{l: l, e: e}
		}
	}
	return ix
}

func cleanPath(p string) string { return strings.TrimPrefix(path.Clean("/"+p), "/") }

// maxSymlinkHops bounds a resolution, as the kernel's ELOOP does; maxPath the length of a path
// resolved, as the kernel's PATH_MAX does.
const (
	maxSymlinkHops = 40
	maxPath        = 4096
)

// lookups bounds the work of the resolutions one walk makes, in bytes of path looked up in the
// index: an image's symlinks, PATH and library names are hostile, and each resolution may look
// up every prefix of a path of up to maxPath bytes through maxSymlinkHops links. Real walks
// take kilobytes.
type lookups struct{ left int }

// lookupBudget is the budget of one walk: a start-up program's, or one fill's libraries.
const lookupBudget = 8 << 20

func newLookups() *lookups { return &lookups{left: lookupBudget} }

func (b *lookups) take(n int) bool {
	b.left -= n
	return b.left >= 0
}

// resolve finds the regular file at p, following symlinks (and hard links) in every component;
// directories the layers do not list are taken as plain directories. It fails once b is spent.
func (ix *imageFiles) resolve(p string, b *lookups) (imageEntry, bool) {
	p = cleanPath(p)
	for hops := 0; hops < maxSymlinkHops; hops++ {
		if len(p) > maxPath { // ENAMETOOLONG
			return imageEntry{}, false
		}
		next := ""
	walk:
		for end := 0; ; end++ { // p[:end] is the prefix up to the next slash, or all of p
			k := strings.IndexByte(p[end:], '/')
			last := k < 0
			if last {
				end = len(p)
			} else {
				end += k
			}
			if !b.take(end) {
				return imageEntry{}, false
			}
			ent, ok := ix.byPath[p[:end]]
			switch {
			case !ok && last:
				return imageEntry{}, false
			case !ok:
			case ent.e.Type == layerfs.TypeSymlink:
				target := ent.e.Linkname
				if !path.IsAbs(target) {
					target = path.Join(path.Dir("/"+p[:end]), target)
				}
				next = cleanPath(target + p[end:])
				break walk
			case ent.e.Type == layerfs.TypeLink && last:
				next = cleanPath(ent.e.Linkname)
				break walk
			case last:
				return ent, ent.e.Type == layerfs.TypeReg
			}
		}
		if next == "" {
			return imageEntry{}, false
		}
		p = next
	}
	return imageEntry{}, false
}

// loadsOf lists the files ld.so would open for an ELF file with info: its interpreter, and the
// first file found for each needed library.
func (ix *imageFiles) loadsOf(info ldso.Info, b *lookups) []imageEntry {
	var out []imageEntry
	if info.Interp != "" {
		if ent, ok := ix.resolve(info.Interp, b); ok {
			out = append(out, ent)
		}
	}
	dirs := ldso.SearchDirs(info.Machine)
	for _, name := range info.Needed {
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		for _, dir := range dirs {
			if ent, ok := ix.resolve(dir+"/"+name, b); ok {
				out = append(out, ent)
				break
			}
		}
	}
	return out
}

// fetchLibraries fetches, level by level, the files running first (fetched by fl) loads that
// the store lacks and no fill holds, into fl.
func (o *onDemand) fetchLibraries(ctx context.Context, l *lazyLayer, first chunked.File, fl *fetchedFill) {
	o.libsOnce.Do(func() {
		if o.libs == nil { // PullLazy of this process made it (pendingLayers)
			o.libs = newImageFiles(o.ordered)
		}
	})
	open := func(d digest.Digest) (*os.File, error) {
		if r, err := fl.Open(d); err == nil {
			return r, nil
		}
		return o.s.Open(ctx, d)
	}
	held := func(d digest.Digest) bool { return o.s.HasObject(d) || o.inFlight(d) != nil }
	err := o.libs.fetchLoads(ctx, imageEntry{l: l, e: first.Entry}, open, held, func(l *lazyLayer, files []chunked.File) error {
		batch, _, err := layer.FetchObjects(ctx, o.s, files, o.fetcher(l))
		if err == nil {
			fl.add(files, batch)
		}
		return err
	})
	if err != nil {
		o.log.Debug("lazy: libraries not fetched ahead", "program", first.Entry.Name, "err", err)
	}
}

// fetchLoads walks, level by level from first, what running it loads (loads) and hands each
// level's files that held is false for to fetch, a layer at a time, within libraryLevels and
// libraryBudget (of uncompressed bytes: what the fetch writes); open reads a file of the walk.
// Files held are walked through whatever their size. A fetch error, the context's end or a spent
// lookup budget ends the walk.
func (ix *imageFiles) fetchLoads(ctx context.Context, first imageEntry, open func(digest.Digest) (*os.File, error), held func(digest.Digest) bool, fetch func(*lazyLayer, []chunked.File) error) error {
	queue := []imageEntry{first}
	seen := map[digest.Digest]bool{first.e.Digest: true}
	b := newLookups()
	var spent int64
	for level := 0; level < libraryLevels && len(queue) > 0; level++ {
		byLayer := map[*lazyLayer][]chunked.File{}
		var order []*lazyLayer
		var next []imageEntry
		for _, ent := range queue {
			if err := ctx.Err(); err != nil {
				return err
			}
			if b.left < 0 {
				return nil // the image's paths took the walk's budget: what is left is filled on demand
			}
			for _, dep := range ix.loads(open, ent, b) {
				d := dep.e.Digest
				f, ok := dep.l.files[d]
				if !ok || seen[d] {
					continue
				}
				stored := held(d)
				if !stored && spent+f.Entry.Size > libraryBudget {
					continue
				}
				seen[d] = true
				next = append(next, dep) // a stored library's own libraries may be missing
				if stored {
					continue
				}
				spent += f.Entry.Size
				if _, ok := byLayer[dep.l]; !ok {
					order = append(order, dep.l)
				}
				byLayer[dep.l] = append(byLayer[dep.l], f)
			}
		}
		for _, l := range order {
			if err := fetch(l, byLayer[l]); err != nil {
				return err
			}
		}
		queue = next
	}
	return nil
}

// maxShebang bounds the first line of a script read for its interpreter (the kernel's
// BINPRM_BUF_SIZE is 256).
const maxShebang = 256

// loads lists what running file ent (read through open) loads: a script's interpreter, or an
// ELF file's interpreter and libraries (loadsOf).
func (ix *imageFiles) loads(open func(digest.Digest) (*os.File, error), ent imageEntry, b *lookups) []imageEntry {
	r, err := open(ent.e.Digest)
	if err != nil {
		return nil
	}
	defer r.Close()
	head := make([]byte, maxShebang)
	n, _ := r.ReadAt(head, 0)
	if line, ok := bytes.CutPrefix(head[:n], []byte("#!")); ok {
		line, _, _ = bytes.Cut(line, []byte("\n"))
		if f := strings.Fields(string(line)); len(f) > 0 && path.IsAbs(f[0]) {
			if interp, ok := ix.resolve(f[0], b); ok {
				return []imageEntry{interp}
			}
		}
		return nil
	}
	info, err := ldso.Needs(r, ent.e.Size)
	if err != nil {
		return nil // not read as a program: nothing to fetch with it
	}
	return ix.loadsOf(info, b)
}
