package snapshotter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/opencontainers/go-digest"
)

// ObjectLister lists the distinct objects of a stored layer with the bytes each takes on disk:
// layerstore.Layers.
type ObjectLister interface {
	Objects(ctx context.Context, diffID digest.Digest) (map[digest.Digest]int64, error)
}

// chargedFile (snapshots/<n>/charged) lists the objects a committed snapshot's Usage counts,
// one digest a line: each object of the store is charged to one snapshot at most, so the sum
// of the snapshots' Usage (containerd's ImageFsInfo) never counts a file twice.
const chargedFile = "charged"

// charge fixes the Usage of the committed snapshot r (to be recorded under key), on the
// stored layer diffID: the objects of the layer no other snapshot is charged for, their bytes
// and their number. containerd's CRI reads a committed snapshot's Usage once, so the charge is
// fixed here; the list is written into the snapshot's directory before its record is saved (a
// crash before the record leaves a directory Cleanup removes). Called with mu held.
func (s *Service) charge(ctx context.Context, key string, r *record, diffID digest.Digest) error {
	objs, err := s.objects.Objects(ctx, diffID)
	if err != nil {
		return err
	}
	var mine []string
	var size int64
	for d, n := range objs {
		if _, ok := s.charged[d]; !ok {
			mine = append(mine, d.String())
			size += n
		}
	}
	slices.Sort(mine)
	if err := os.MkdirAll(s.dir(r), 0o700); err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	if err := writeFileSync(filepath.Join(s.dir(r), chargedFile), []byte(strings.Join(mine, "\n"))); err != nil {
		return err
	}
	for _, d := range mine {
		s.charged[digest.Digest(d)] = key
	}
	r.Size, r.Inodes = size, int64(len(mine))
	return nil
}

// uncharge frees the objects charged to key (removed): the next snapshot of a layer holding
// one is charged for it. Called with mu held.
func (s *Service) uncharge(key string) {
	for d, k := range s.charged {
		if k == key {
			delete(s.charged, d)
		}
	}
}

// loadCharges reads the charged lists of the committed snapshots (at start).
func (s *Service) loadCharges() error {
	s.charged = map[digest.Digest]string{}
	for key, r := range s.meta.Snapshots {
		f, err := os.Open(filepath.Join(s.dir(r), chargedFile))
		if errors.Is(err, fs.ErrNotExist) {
			continue // not on a stored layer, or recorded before charges
		}
		if err != nil {
			return fmt.Errorf("snapshotter: %w", err)
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if d, err := digest.Parse(sc.Text()); err == nil {
				s.charged[d] = key
			}
		}
		f.Close()
		if err := sc.Err(); err != nil {
			return fmt.Errorf("snapshotter: %s: %w", f.Name(), err)
		}
	}
	return nil
}

// writeFileSync writes p through a temp file, fsync and rename: whole or not at all.
func writeFileSync(p string, b []byte) error {
	tmp := p + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, p)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("snapshotter: writing %s: %w", p, err)
	}
	return nil
}
