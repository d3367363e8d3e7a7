package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
)

// dirLazy holds pending lazy pulls (package lazy writes them; docs/design.md, Lazy pulls): gc
// keeps what each will need, as it keeps what a ref needs.
const dirLazy = "lazy"

// markPendingLazy marks, for every pending lazy pull, the stored layers of its image and the
// objects its pending layers' TOCs name (those already fetched; the others are placeholders,
// which live outside objects/ and which gc never touches). A record it cannot read stops gc: what
// it protects cannot be guessed.
func (x *Exclusive) markPendingLazy(ctx context.Context, r *reach) error {
	ents, err := os.ReadDir(filepath.Join(x.root, dirLazy))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("gc: %w", err)
	}
	for _, e := range ents {
		if _, err := digest.Parse("sha256:" + e.Name()); err != nil {
			continue // a pending pull being removed (.rm-*)
		}
		dir := filepath.Join(x.root, dirLazy, e.Name())
		if err := x.markPending(ctx, r, dir); err != nil {
			return fmt.Errorf("gc: lazy pull %s: %w", e.Name(), err)
		}
	}
	return nil
}

func (x *Exclusive) markPending(ctx context.Context, r *reach, dir string) error {
	var rec struct {
		Config []byte `json:"config"`
	}
	var cfg struct {
		RootFS struct {
			DiffIDs []digest.Digest `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := readJSON(filepath.Join(dir, "pull.json"), &rec); err != nil {
		return err
	}
	if err := json.Unmarshal(rec.Config, &cfg); err != nil {
		return err
	}
	for _, l := range cfg.RootFS.DiffIDs {
		if err := l.Validate(); err != nil {
			return err
		}
		objs, err := x.LayerObjects(ctx, l)
		if err == nil {
			r.layers[l] = true
		} else if objs, err = pendingObjects(filepath.Join(dir, l.Encoded(), "toc.json.zst")); err != nil {
			return fmt.Errorf("layer %s is neither stored nor pending: %w", l, err)
		}
		for _, o := range objs {
			r.objects[o] = true
		}
	}
	return nil
}

func pendingObjects(tocPath string) ([]digest.Digest, error) {
	b, err := readZstd(tocPath, 0)
	if err != nil {
		return nil, err
	}
	toc, err := chunked.ParseTOC(b)
	if err != nil {
		return nil, err
	}
	return TOCObjects(toc)
}

// removeLazyLeftovers deletes lazy/.rm-*: a completed pull's directory that a crash left between
// its rename and its delete (package lazy, Pending.Remove), with its filled placeholders, a copy
// of the pulled layers' file data that nothing else would ever remove. Only under the exclusive
// lock: a completion renames and deletes under the shared one. It returns how many it removed.
func (x *Exclusive) removeLazyLeftovers() (int, error) {
	if err := x.check(); err != nil {
		return 0, err
	}
	dir := filepath.Join(x.root, dirLazy)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("gc: %w", err)
	}
	n := 0
	for _, e := range ents {
		if !strings.HasPrefix(e.Name(), ".rm-") {
			continue
		}
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return n, fmt.Errorf("gc: removing a lazy pull's leftover: %w", err)
		}
		n++
	}
	return n, nil
}
