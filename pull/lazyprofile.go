package pull

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// Start-up profiles (docs/design.md, Start-up profiles): the paths a lazy pull filled on demand
// while its first container started, in order, kept per repository in
// <store>/lazy-profiles/<sha256 hex of the repository>.json. A later lazy pull of the same
// repository (the same image, or an update of it: matched by path) fetches those files first.
// A profile names paths only: content always comes from the layer's TOC digests through the
// store's verified ingest, so a hostile profile can at worst make a pull fetch files early.
const (
	profileDir      = "lazy-profiles"
	profileVersion  = 1
	maxProfileBytes = 4 << 20
	maxProfilePaths = 1 << 16
)

// startupProfile is the on-disk form of a profile.
type startupProfile struct {
	Version    int      `json:"version"`
	Repository string   `json:"repository"`
	Paths      []string `json:"paths"`
}

// profileRepo is the repository a pending pull's profile is kept under: its source without the
// digest (HOST/REPO), or its name without tag or digest when it has no source.
func profileRepo(source, name string) string {
	r := source
	if r == "" {
		r = name
	}
	if i := strings.IndexByte(r, '@'); i >= 0 {
		r = r[:i]
	}
	if i := strings.LastIndexByte(r, ':'); i > strings.LastIndexByte(r, '/') {
		r = r[:i]
	}
	return r
}

func profilePath(s *store.Store, repo string) string {
	return filepath.Join(s.Root(), profileDir, digest.FromString(repo).Encoded()+".json")
}

// cleanProfilePath is a layer path as profiles keep it: relative, cleaned, no "..".
func cleanProfilePath(p string) (string, bool) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	return c, c != "" && !strings.ContainsRune(c, 0)
}

// loadProfile reads repo's profile; a missing one is nil, and one that is unreadable, too
// large, of another version or repository, or malformed is ignored with a warning.
func loadProfile(s *store.Store, repo string, log *slog.Logger) []string {
	f, err := os.Open(profilePath(s, repo))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	var p startupProfile
	if err == nil {
		defer f.Close()
		var b []byte
		if b, err = io.ReadAll(io.LimitReader(f, maxProfileBytes+1)); err == nil {
			err = parseProfile(b, repo, &p)
		}
	}
	if err != nil {
		log.Warn("lazy: start-up profile ignored", "repository", repo, "err", err)
		return nil
	}
	return p.Paths
}

// parseProfile decodes and checks a profile's bytes.
func parseProfile(b []byte, repo string, p *startupProfile) error {
	if len(b) > maxProfileBytes {
		return fmt.Errorf("over %d bytes", maxProfileBytes)
	}
	if err := json.Unmarshal(b, p); err != nil {
		return err
	}
	if p.Version != profileVersion || p.Repository != repo {
		return fmt.Errorf("version %d of repository %q, want version %d of %q", p.Version, p.Repository, profileVersion, repo)
	}
	if len(p.Paths) > maxProfilePaths {
		return fmt.Errorf("%d paths, over %d", len(p.Paths), maxProfilePaths)
	}
	for _, x := range p.Paths {
		if c, ok := cleanProfilePath(x); !ok || c != x {
			return fmt.Errorf("path %q is not a clean relative path", x)
		}
	}
	return nil
}

// saveProfile writes repo's profile (temp file, rename: absent or whole).
func saveProfile(s *store.Store, repo string, paths []string) error {
	if len(paths) > maxProfilePaths {
		paths = paths[:maxProfilePaths]
	}
	b, err := json.Marshal(startupProfile{Version: profileVersion, Repository: repo, Paths: paths})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Join(s.Root(), profileDir), 0o700); err != nil {
		return err
	}
	f, err := os.CreateTemp(s.TempDir(), "profile-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(f.Name(), profilePath(s, repo))
}

// profileRecorder keeps the paths filled on demand, in order, until stopped.
type profileRecorder struct {
	mu      sync.Mutex
	stopped bool
	seen    map[string]bool
	paths   []string
}

func (r *profileRecorder) add(name string) {
	c, ok := cleanProfilePath(name)
	r.mu.Lock()
	defer r.mu.Unlock()
	if ok && !r.stopped && !r.seen[c] {
		if r.seen == nil {
			r.seen = map[string]bool{}
		}
		r.seen[c] = true
		r.paths = append(r.paths, c)
	}
}

// stop ends the recording and returns old followed by the paths recorded that old lacks.
func (r *profileRecorder) stop(old []string) (merged []string, added int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopped = true
	have := map[string]bool{}
	for _, p := range old {
		have[p] = true
	}
	merged = append(merged, old...)
	for _, p := range r.paths {
		if !have[p] {
			merged = append(merged, p)
			added++
		}
	}
	return merged, added
}

// profiledFiles are the files of l that the profile names, in profile order, that the store
// lacks (empty files have no object).
func profiledFiles(s *store.Store, l *lazyLayer, paths []string) []chunked.File {
	byPath := map[string]chunked.File{}
	for _, f := range l.part.Layer.Files {
		if c, ok := cleanProfilePath(f.Entry.Name); ok {
			byPath[c] = f
		}
	}
	var out []chunked.File
	taken := map[digest.Digest]bool{}
	for _, p := range paths {
		f, ok := byPath[p]
		if !ok || f.Entry.Size <= 0 || taken[f.Entry.Digest] || s.HasObject(f.Entry.Digest) {
			continue
		}
		taken[f.Entry.Digest] = true
		out = append(out, f)
	}
	return out
}

// prefetchProfile fetches the profiled files of every layer, each layer's in one FetchFiles
// (its plan merges neighbouring frames into few Range requests). A failure is logged only: the
// files are then filled on demand as without a profile.
func prefetchProfile(ctx context.Context, s *store.Store, src sourceFetch, layers []*lazyLayer, paths []string, log *slog.Logger) {
	if len(paths) == 0 {
		return
	}
	for _, l := range layers {
		files := profiledFiles(s, l, paths)
		if len(files) == 0 {
			continue
		}
		n, err := layer.FetchFiles(ctx, s, files, src(l))
		log.Debug("lazy: profiled files fetched", "layer", l.desc.Digest, "files", len(files), "bytes", n, "err", err)
		if err != nil {
			log.Warn("lazy: fetching the start-up profile's files failed; they are filled on demand", "err", err)
		}
	}
}

// sourceFetch gives the range fetcher of a pending layer.
type sourceFetch func(l *lazyLayer) layer.RangeFetcher
