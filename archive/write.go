package archive

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/ocilayout"
)

// WriteOCIArchive writes the OCI layout in dir as an oci-archive at path: a tar of oci-layout,
// index.json and blobs/, written to a temporary file renamed into place when complete.
func WriteOCIArchive(dir, path string) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kura-archive-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if d.Name()[0] == '.' { // a writer's temporary file
			return nil
		}
		return addFile(tw, p, filepath.ToSlash(rel), d)
	})
	return finishArchive(tmp, tw, err, path)
}

func addFile(tw *tar.Writer, p, name string, d fs.DirEntry) error {
	if d.IsDir() {
		return tw.WriteHeader(&tar.Header{Name: name + "/", Typeflag: tar.TypeDir, Mode: 0o755})
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: st.Size()}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}

// WriteDir writes the image tag (empty: the only one) of the OCI layout in dir in skopeo's dir
// format at path, which must be absent or empty: manifest.json, version, and the config and
// layer blobs named by their hex digest.
func WriteDir(dir, tag, path string) error {
	if entries, err := os.ReadDir(path); err == nil && len(entries) > 0 {
		return fmt.Errorf("dir:%s is not empty: %w", path, errdefs.ErrInvalid)
	} else if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	l := ocilayout.Layout{Dir: dir}
	r, err := l.Resolve(tag)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return err
	}
	for _, d := range append([]ocispec.Descriptor{r.Manifest.Config}, r.Manifest.Layers...) {
		src, _ := l.BlobPath(d.Digest)
		if err := copyFile(src, filepath.Join(path, d.Digest.Encoded())); err != nil {
			return err
		}
	}
	if err := os.WriteFile(filepath.Join(path, "manifest.json"), r.ManifestBytes, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(path, "version"), []byte("Directory Transport Version: 1.1\n"), 0o644)
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return nil // a blob used twice
	}
	if err != nil {
		return err
	}
	_, err = io.Copy(out, in)
	if cerr := out.Close(); err == nil {
		err = cerr
	}
	return err
}
