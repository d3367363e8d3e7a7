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

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// FsckReport is what fsck found (and, with repair, removed).
type FsckReport struct {
	Objects, Layers, Images, Refs int
	// Problems are damaged or dangling things; a clean store has none.
	Problems []string
	// Repaired counts things removed by repair.
	Repaired int
	// TempFiles are leftovers of interrupted writes (or, without repair, writes in progress).
	TempFiles int
}

// Clean says whether fsck found no problems.
func (r FsckReport) Clean() bool { return len(r.Problems) == 0 }

// Fsck re-hashes every object and checks every reference: refs → images → layers → objects.
// Without repair it takes the shared lock and changes nothing; with repair it takes the
// exclusive lock and removes damaged objects, the layers, images and refs that depend on
// missing things, stray files, and all temp files. A re-import or pull restores what was removed.
func (s *Store) Fsck(ctx context.Context, repair bool) (FsckReport, error) {
	var unlock func()
	var x *Exclusive // only with repair: the deletes need it
	var err error
	if repair {
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
	var r FsckReport
	problem := func(format string, args ...any) { r.Problems = append(r.Problems, fmt.Sprintf(format, args...)) }
	fix := func(err error) {
		if err == nil {
			r.Repaired++
		} else {
			problem("repair failed: %v", err)
		}
	}

	// Objects: name must equal content hash.
	base := filepath.Join(s.root, dirObjects)
	fans, err := os.ReadDir(base)
	if err != nil {
		return r, err
	}
	for _, fan := range fans {
		fp := filepath.Join(base, fan.Name())
		if !fan.IsDir() || len(fan.Name()) != 2 {
			problem("stray file %s", fp)
			if repair {
				fix(os.RemoveAll(fp))
			}
			continue
		}
		ents, err := os.ReadDir(fp)
		if err != nil {
			return r, err
		}
		for _, e := range ents {
			if err := ctx.Err(); err != nil {
				return r, err
			}
			p := filepath.Join(fp, e.Name())
			want := digest.NewDigestFromEncoded(digest.SHA256, fan.Name()+e.Name())
			if want.Validate() != nil || !e.Type().IsRegular() {
				problem("stray file %s", p)
				if repair {
					fix(os.RemoveAll(p))
				}
				continue
			}
			r.Objects++
			got, err := hashFile(p)
			if err != nil {
				return r, fmt.Errorf("fsck: %w", err)
			}
			if got != want {
				problem("object %s is damaged: content hashes to %s", want, got)
				if repair {
					fix(os.Remove(p))
				}
			}
		}
	}

	// Layers: records readable, every object present.
	layers, err := s.Layers(ctx)
	if err != nil {
		return r, err
	}
	goodLayer := map[digest.Digest]bool{}
	for _, l := range layers {
		r.Layers++
		err := s.checkLayer(ctx, l)
		if err == nil {
			goodLayer[l] = true
			continue
		}
		problem("layer %s: %v", l, err)
		if repair {
			fix(x.DeleteLayer(ctx, l))
		}
	}

	// Images: manifest and config match their digests, every layer present.
	images, err := s.Images(ctx)
	if err != nil {
		return r, err
	}
	goodImage := map[digest.Digest]bool{}
	for _, id := range images {
		r.Images++
		err := s.checkImage(ctx, id, goodLayer)
		if err == nil {
			goodImage[id] = true
			continue
		}
		problem("image %s: %v", id, err)
		if repair {
			fix(x.DeleteImage(ctx, id))
		}
	}

	// Refs: point at good images.
	ents, err := os.ReadDir(filepath.Join(s.root, dirRefs))
	if err != nil {
		return r, err
	}
	for _, e := range ents {
		r.Refs++
		p := filepath.Join(s.root, dirRefs, e.Name())
		name, err := url.PathUnescape(e.Name())
		var id digest.Digest
		if err == nil {
			id, err = s.Ref(ctx, name)
		}
		if err == nil && !goodImage[id] {
			err = fmt.Errorf("image %s: %w", id, errdefs.ErrNotFound)
		}
		if err != nil {
			problem("ref %s: %v", e.Name(), err)
			if repair {
				fix(os.Remove(p))
			}
		}
	}

	// Temp files: leftovers of interrupted writes; only removable when nobody is writing.
	if repair {
		r.TempFiles, err = x.removeTemps()
		if err != nil {
			return r, err
		}
		return r, nil
	}
	r.TempFiles, err = s.TempFiles()
	return r, err
}

func hashFile(p string) (digest.Digest, error) {
	f, err := os.Open(p)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", fmt.Errorf("reading %s: %w", p, err)
	}
	return digest.NewDigest(digest.SHA256, h), nil
}

func (s *Store) checkLayer(ctx context.Context, l digest.Digest) error {
	if _, err := s.Layer(ctx, l); err != nil {
		return err
	}
	toc, err := s.LayerTOC(ctx, l)
	if err != nil {
		return err
	}
	if _, err := s.LayerTarSplit(ctx, l); err != nil {
		return err
	}
	objs, err := TOCObjects(toc)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if !s.HasObject(o) {
			return fmt.Errorf("object %s: %w", o, errdefs.ErrNotFound)
		}
	}
	return nil
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
	for _, l := range img.Layers {
		if !goodLayer[l] {
			return fmt.Errorf("layer %s: %w", l, errors.Join(errdefs.ErrNotFound))
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
