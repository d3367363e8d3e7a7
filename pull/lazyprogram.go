package pull

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// The start-up program of a lazy pull. A container runs its image's entrypoint (the config's
// Entrypoint, else its Cmd) before anything else, so a lazy pull fetches that program with the
// first files, and then, beside the placeholders, what it loads: a script's interpreter (#!)
// and an ELF file's libraries, level by level (imageFiles.fetchLoads, as for a program filled on
// demand). Like the baseline it is a guess made for speed: a program not found or a file not
// parsed costs a log line at most, and what was not fetched is filled on demand.

// defaultPath is the PATH a runtime gives a container whose config sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// maxPathDirs bounds the PATH directories searched for the program (a config is hostile);
// programBudget the size of a program fetched before the image is mountable (a larger one is
// filled on demand, within the fill timeout).
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
	b := newLookups()
	switch {
	case path.IsAbs(name):
		st.entry, st.found = st.ix.resolve(name, b)
	case strings.Contains(name, "/"):
		st.entry, st.found = st.ix.resolve(path.Join("/", c.Config.WorkingDir, name), b)
	default:
		dirs := defaultPath
		for _, kv := range c.Config.Env {
			if v, ok := strings.CutPrefix(kv, "PATH="); ok {
				dirs = v
			}
		}
		for i, dir := range strings.SplitN(dirs, ":", maxPathDirs+1) {
			if i == maxPathDirs {
				break
			}
			if path.IsAbs(dir) {
				if st.entry, st.found = st.ix.resolve(dir+"/"+name, b); st.found {
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
	return f, ok && f.Entry.Size <= programBudget
}

// fetchLoads fetches what the start-up program (stored by now) loads that the store lacks: its
// interpreter, its libraries and theirs (imageFiles.fetchLoads).
func (st *startup) fetchLoads(ctx context.Context, s *store.Store, fetcher sourceFetch, log *slog.Logger) {
	if !st.found {
		return
	}
	open := func(d digest.Digest) (*os.File, error) { return s.Open(ctx, d) }
	err := st.ix.fetchLoads(ctx, st.entry, open, s.HasObject, func(l *lazyLayer, files []chunked.File) error {
		_, err := layer.FetchFiles(ctx, s, files, fetcher(l))
		return err
	})
	if err != nil {
		log.Debug("lazy: the start-up program's libraries not fetched", "program", st.entry.e.Name, "err", err)
	}
}
