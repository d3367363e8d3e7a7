package pull

import (
	"context"
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
// files ld.so will load for it that the store lacks, one request per level of dependencies
// instead of one per library. The files are found as ld.so finds them by default (no
// ld.so.cache, RPATH or LD_LIBRARY_PATH): PT_INTERP by its path, DT_NEEDED names in the
// machine's multiarch directories, then lib64, lib and their usr/ twins, following the image's
// symlinks. All of it is a guess made for speed: a library not found, a file that is not ELF or a
// failed fetch is only logged, and the reader's own file is served as without it.
const (
	libraryLevels = 8        // levels of libraries' libraries followed
	libraryBudget = 32 << 20 // compressed bytes one fill fetches for libraries
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

// resolve finds the regular file at p, following symlinks (and hard links) in every component;
// directories the layers do not list are taken as plain directories.
func (ix *imageFiles) resolve(p string) (imageEntry, bool) {
	p = cleanPath(p)
	for hops := 0; hops < maxSymlinkHops; hops++ {
		if len(p) > maxPath { // ENAMETOOLONG; the walk below is quadratic in the components
			return imageEntry{}, false
		}
		comps := strings.Split(p, "/")
		next := ""
		for i := range comps {
			prefix := strings.Join(comps[:i+1], "/")
			ent, ok := ix.byPath[prefix]
			switch {
			case !ok && i == len(comps)-1:
				return imageEntry{}, false
			case !ok:
				continue
			case ent.e.Type == layerfs.TypeSymlink:
				target := ent.e.Linkname
				if !path.IsAbs(target) {
					target = path.Join(path.Dir("/"+prefix), target)
				}
				next = cleanPath(path.Join(append([]string{target}, comps[i+1:]...)...))
			case ent.e.Type == layerfs.TypeLink && i == len(comps)-1:
				next = cleanPath(ent.e.Linkname)
			case i == len(comps)-1:
				return ent, ent.e.Type == layerfs.TypeReg
			}
			if next != "" {
				break
			}
		}
		if next == "" {
			return imageEntry{}, false
		}
		p = next
	}
	return imageEntry{}, false
}

// loads lists the files ld.so would open for an ELF file with info: its interpreter, and the
// first file found for each needed library.
func (ix *imageFiles) loads(info ldso.Info) []imageEntry {
	var out []imageEntry
	if info.Interp != "" {
		if ent, ok := ix.resolve(info.Interp); ok {
			out = append(out, ent)
		}
	}
	dirs := ldso.SearchDirs(info.Machine)
	for _, name := range info.Needed {
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		for _, dir := range dirs {
			if ent, ok := ix.resolve(dir + "/" + name); ok {
				out = append(out, ent)
				break
			}
		}
	}
	return out
}

// fetchLibraries fetches, level by level, the files ld.so loads for first (fetched by fl)
// that the store lacks and no fill holds, into fl.
func (o *onDemand) fetchLibraries(ctx context.Context, first chunked.File, fl *fetchedFill) {
	o.libsOnce.Do(func() {
		if o.libs == nil { // PullLazy of this process made it (pendingLayers)
			o.libs = newImageFiles(o.ordered)
		}
	})
	queue := []chunked.File{first}
	seen := map[digest.Digest]bool{first.Entry.Digest: true}
	var spent int64
	for level := 0; level < libraryLevels && len(queue) > 0 && ctx.Err() == nil; level++ {
		byLayer := map[*lazyLayer][]chunked.File{}
		var order []*lazyLayer
		for _, f := range queue {
			for _, ent := range o.libs.loads(o.elfOf(fl, f)) {
				d := ent.e.Digest
				g, ok := ent.l.files[d]
				if !ok || seen[d] || o.s.HasObject(d) || o.inFlight(d) != nil || spent+g.Range.Length > libraryBudget {
					continue
				}
				seen[d] = true
				spent += g.Range.Length
				if _, ok := byLayer[ent.l]; !ok {
					order = append(order, ent.l)
				}
				byLayer[ent.l] = append(byLayer[ent.l], g)
			}
		}
		queue = nil
		for _, l := range order {
			files := byLayer[l]
			batch, _, err := layer.FetchObjects(ctx, o.s, files, o.fetcher(l))
			if err != nil {
				o.log.Debug("lazy: libraries not fetched ahead", "program", first.Entry.Name, "err", err)
				return
			}
			fl.add(files, batch)
			queue = append(queue, files...)
		}
	}
}

// elfOf reads what ld.so loads for f, from the fill that fetched it (or the store).
func (o *onDemand) elfOf(fl *fetchedFill, f chunked.File) ldso.Info {
	r, err := fl.Open(f.Entry.Digest)
	if err != nil {
		if r, err = o.s.Open(context.Background(), f.Entry.Digest); err != nil {
			return ldso.Info{}
		}
	}
	defer r.Close()
	info, err := ldso.Needs(r, f.Entry.Size)
	if err != nil {
		o.log.Debug("lazy: not read as a program", "file", f.Entry.Name, "err", err)
	}
	return info
}
