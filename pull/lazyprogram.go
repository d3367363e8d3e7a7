package pull

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"path"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/lazy/ldso"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// The start-up program of a lazy pull. A container runs its image's entrypoint (the config's
// Entrypoint, else its Cmd) before anything else, so a lazy pull fetches that program with the
// first files, and then, beside the placeholders, what it loads: a script's interpreter (#!)
// and an ELF file's libraries, level by level, as fetchLibraries does for a program filled on
// demand. Like the baseline it is a guess made for speed: a program not found or a file not
// parsed costs a log line at most, and what was not fetched is filled on demand.

// defaultPath is the PATH a runtime gives a container whose config sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// maxPathDirs bounds the PATH directories searched for the program (a config is hostile);
// programBudget the compressed size of a program fetched before the image is mountable (a
// larger one is filled on demand, within the fill timeout).
const (
	maxPathDirs   = 64
	programBudget = 16 << 20
)

// startup is a lazy pull's start-up program, found in its pending layers.
type startup struct {
	ix    *imageFiles
	entry imageEntry
	found bool
}

// newStartup finds the program config runs first in the pending layers (lowest first). A
// relative name with a slash is taken from the config's working directory, one without from
// the directories of its PATH, as runc's exec does.
func newStartup(config []byte, layers []*lazyLayer) *startup {
	st := &startup{ix: newImageFiles(layers)}
	var c ocispec.Image
	if json.Unmarshal(config, &c) != nil {
		return st
	}
	argv := slices.Concat(c.Config.Entrypoint, c.Config.Cmd)
	if len(argv) == 0 || argv[0] == "" {
		return st
	}
	name := argv[0]
	switch {
	case path.IsAbs(name):
		st.entry, st.found = st.ix.resolve(name)
	case strings.Contains(name, "/"):
		st.entry, st.found = st.ix.resolve(path.Join("/", c.Config.WorkingDir, name))
	default:
		dirs := defaultPath
		for _, kv := range c.Config.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				dirs = v
			}
		}
		for i, dir := range strings.Split(dirs, ":") {
			if i == maxPathDirs {
				break
			}
			if path.IsAbs(dir) {
				if st.entry, st.found = st.ix.resolve(dir + "/" + name); st.found {
					break
				}
			}
		}
	}
	return st
}

// program is the start-up program's file if layer l holds it and it is within programBudget.
func (st *startup) program(l *lazyLayer) (chunked.File, bool) {
	if !st.found || st.entry.l != l {
		return chunked.File{}, false
	}
	f, ok := l.files[st.entry.e.Digest]
	return f, ok && f.Range.Length <= programBudget
}

// fetchLoads fetches, level by level, the files the start-up program (stored by now) loads
// that the store lacks: its interpreter, its libraries and theirs.
func (st *startup) fetchLoads(ctx context.Context, s *store.Store, fetcher sourceFetch, log *slog.Logger) {
	if !st.found {
		return
	}
	queue := []imageEntry{st.entry}
	seen := map[digest.Digest]bool{st.entry.e.Digest: true}
	var spent int64
	for level := 0; level < libraryLevels && len(queue) > 0 && ctx.Err() == nil; level++ {
		byLayer := map[*lazyLayer][]chunked.File{}
		var order []*lazyLayer
		var next []imageEntry
		for _, ent := range queue {
			for _, dep := range st.loads(ctx, s, ent) {
				d := dep.e.Digest
				f, ok := dep.l.files[d]
				if !ok || seen[d] || spent+f.Range.Length > libraryBudget {
					continue
				}
				seen[d] = true
				next = append(next, dep)
				if s.HasObject(d) {
					continue
				}
				spent += f.Range.Length
				if _, ok := byLayer[dep.l]; !ok {
					order = append(order, dep.l)
				}
				byLayer[dep.l] = append(byLayer[dep.l], f)
			}
		}
		for _, l := range order {
			if _, err := layer.FetchFiles(ctx, s, byLayer[l], fetcher(l)); err != nil {
				log.Debug("lazy: the start-up program's libraries not fetched", "program", st.entry.e.Name, "err", err)
				return
			}
		}
		queue = next
	}
}

// maxShebang bounds the first line of a script read for its interpreter (the kernel's
// BINPRM_BUF_SIZE is 256).
const maxShebang = 256

// loads lists what running the stored file ent loads: a script's interpreter, or an ELF
// file's interpreter and libraries.
func (st *startup) loads(ctx context.Context, s *store.Store, ent imageEntry) []imageEntry {
	r, err := s.Open(ctx, ent.e.Digest)
	if err != nil {
		return nil
	}
	defer r.Close()
	head := make([]byte, maxShebang)
	n, _ := r.ReadAt(head, 0)
	if line, ok := bytes.CutPrefix(head[:n], []byte("#!")); ok {
		line, _, _ = bytes.Cut(line, []byte("\n"))
		if f := strings.Fields(string(line)); len(f) > 0 && path.IsAbs(f[0]) {
			if interp, ok := st.ix.resolve(f[0]); ok {
				return []imageEntry{interp}
			}
		}
		return nil
	}
	info, err := ldso.Needs(r, ent.e.Size)
	if err != nil {
		return nil
	}
	return st.ix.loads(info)
}
