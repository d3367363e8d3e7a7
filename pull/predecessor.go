package pull

import (
	"context"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/store"
)

// predecessors returns, for each of n layers of an image about to be pulled under name, a
// stored layer to predict its tar-split from (package tarsplit), or "": the layer at the same
// position in the newest stored image of the same repository (the previous version, usually),
// else of the newest image. A poor choice costs only the fallback: fetching the tar-split.
func predecessors(ctx context.Context, s *store.Store, name string, n int) []digest.Digest {
	out := make([]digest.Digest, n)
	refs, err := s.Refs(ctx)
	if err != nil {
		return out
	}
	repo := repository(name)
	var same, any store.Image
	for ref, id := range refs {
		img, err := s.Image(ctx, id)
		if err != nil || len(img.Layers) == 0 {
			continue
		}
		if any.ID == "" || img.Imported.After(any.Imported) {
			any = img
		}
		if repository(ref) == repo && (same.ID == "" || img.Imported.After(same.Imported)) {
			same = img
		}
	}
	best := same
	if best.ID == "" {
		best = any
	}
	for i := range out {
		if len(best.Layers) > 0 {
			out[i] = best.Layers[min(i, len(best.Layers)-1)]
		}
	}
	return out
}

// repository strips the tag and digest from an image name: "host/a/b:v2" → "host/a/b".
func repository(name string) string {
	if i := strings.IndexByte(name, '@'); i >= 0 {
		name = name[:i]
	}
	if i := strings.LastIndexByte(name, ':'); i > strings.LastIndexByte(name, '/') {
		name = name[:i]
	}
	return name
}

// IsUpdate says whether pulling name updates an image the store holds: whether a stored ref
// names the same repository. Such a pull reuses most of its content and its cost is the
// metadata of the versions it compares; a caller may tune for that (kura pull paces its heap).
func IsUpdate(ctx context.Context, s *store.Store, name string) bool {
	if name == "" {
		return false
	}
	refs, err := s.Refs(ctx)
	if err != nil {
		return false
	}
	repo := repository(name)
	for ref := range refs {
		if repository(ref) == repo {
			return true
		}
	}
	return false
}
