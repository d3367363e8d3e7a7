package snapshotter

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/store"
)

// Ingester moves a committed snapshot's files into Kura's store and serves them from there:
// layerstore.Layers (Ingest stores a layer tar as a one-layer image kept by a checkout use of
// a directory; MountLayer serves a stored layer as the remote path's layers are served).
type Ingester interface {
	Ingest(ctx context.Context, r io.Reader, keep string) (store.Image, digest.Digest, error)
	MountLayer(ctx context.Context, image, diffID digest.Digest) (string, error)
}

// ingest is the plain path's commit into the store: the upper directory of r becomes a layer
// (writeUpperTar), stored with file-level dedup and kept from gc by a use of the snapshot's
// directory (snapshots/<id>, which lives until Remove), then mounted. It returns the mount
// and fills r.Image and r.DiffID; r's own files are still in place (the caller removes them
// once the record naming the mount is saved). Called with mu held.
func (s *Service) ingest(ctx context.Context, r *record) (string, error) {
	pr, pw := io.Pipe()
	go func() { pw.CloseWithError(writeUpperTar(ctx, s.fsDir(r), pw)) }()
	img, diffID, err := s.ingester.Ingest(ctx, pr, s.dir(r))
	pr.CloseWithError(fmt.Errorf("snapshotter: ingest ended"))
	if err != nil {
		return "", err
	}
	dir, err := s.ingester.MountLayer(ctx, img.ID, diffID)
	if err != nil {
		return "", err
	}
	r.Image, r.DiffID = img.ID, diffID
	return dir, nil
}

// dropUpper removes a committed snapshot's own files once its layer is served from the store.
func (s *Service) dropUpper(r *record) {
	for _, d := range []string{"fs", "work"} {
		if err := os.RemoveAll(filepath.Join(s.dir(r), d)); err != nil {
			s.log.Warn("removing an ingested snapshot's directory", "dir", s.dir(r), "err", err)
		}
	}
}

// reviveIngested mounts again the layers of the snapshots committed into the store (their
// mounts do not survive a reboot) and removes the files of a commit killed between its record
// and their removal.
func (s *Service) reviveIngested(ctx context.Context) {
	if s.ingester == nil {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, r := range s.meta.Snapshots {
		if r.DiffID == "" {
			continue
		}
		dir, err := s.ingester.MountLayer(ctx, r.Image, r.DiffID)
		if err == nil {
			err = symlink(dir, r.Dir) // the same link, unless a crash came before it was made
		}
		if err != nil {
			s.log.Error("ingested snapshot not revived", "snapshot", k, "err", err)
			continue
		}
		s.dropUpper(r)
		s.log.Info("ingested snapshot revived", "snapshot", k, "dir", dir)
	}
}

// symlink makes link point at target, replacing what link was (a new link, then a rename).
func symlink(target, link string) error {
	tmp := link + ".tmp"
	os.Remove(tmp)
	if err := os.Symlink(target, tmp); err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	if err := os.Rename(tmp, link); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("snapshotter: %w", err)
	}
	return nil
}
