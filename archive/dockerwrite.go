package archive

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/tarstream"
)

// WriteDockerArchive writes the image tag (empty: the only one) of the OCI layout in dir as a
// docker-archive at path, as skopeo's docker-archive: destination and `docker save` do: the
// config as HEX.json, each layer decompressed to a tar named by its DiffID (docker load reads
// only uncompressed layers) and checked against it, and manifest.json naming them, with
// repoTag (if not empty) as its only RepoTags entry. The file is written to a temporary file
// renamed into place when complete.
func WriteDockerArchive(dir, tag, repoTag, path string) error {
	l := ocilayout.Layout{Dir: dir}
	img, err := l.Resolve(tag)
	if err != nil {
		return err
	}
	diffIDs := img.Config.RootFS.DiffIDs
	if len(diffIDs) != len(img.Manifest.Layers) {
		return fmt.Errorf("config lists %d diff_ids for %d layers: %w", len(diffIDs), len(img.Manifest.Layers), errdefs.ErrInvalid)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kura-archive-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	entry := dockerImage{Config: img.Manifest.Config.Digest.Encoded() + ".json", RepoTags: []string{}}
	if repoTag != "" {
		entry.RepoTags = append(entry.RepoTags, repoTag)
	}
	tw := tar.NewWriter(tmp)
	err = addBytes(tw, entry.Config, img.ConfigBytes)
	written := map[digest.Digest]bool{}
	for i, d := range img.Manifest.Layers {
		name := diffIDs[i].Encoded() + ".tar"
		entry.Layers = append(entry.Layers, name)
		if err != nil || written[diffIDs[i]] {
			continue
		}
		written[diffIDs[i]] = true
		err = addLayer(tw, l, d, diffIDs[i], name, dir)
	}
	if err == nil {
		var mb []byte
		mb, err = json.Marshal([]dockerImage{entry})
		if err == nil {
			err = addBytes(tw, "manifest.json", mb)
		}
	}
	return finishArchive(tmp, tw, err, path)
}

// finishArchive closes the tar (after err, only the file), syncs and renames it to path.
func finishArchive(tmp *os.File, tw *tar.Writer, err error, path string) error {
	if err == nil {
		err = tw.Close()
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func addBytes(tw *tar.Writer, name string, b []byte) error {
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(b))}); err != nil {
		return err
	}
	_, err := tw.Write(b)
	return err
}

// addLayer decompresses the layer blob d (verified) to a temporary file in tmpDir, which sizes
// its tar entry, checks it hashes to diffID and adds it as name.
func addLayer(tw *tar.Writer, l ocilayout.Layout, d ocispec.Descriptor, diffID digest.Digest, name, tmpDir string) error {
	rc, err := l.Verified(d)
	if err != nil {
		return err
	}
	defer rc.Close()
	plain, err := tarstream.Decompress(rc)
	if err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	f, err := os.CreateTemp(tmpDir, ".layer-")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), plain)
	if err == nil {
		_, err = io.Copy(io.Discard, rc) // to EOF: the blob digest is checked there
	}
	if err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return fmt.Errorf("layer %s decompresses to %s, the config lists %s: %w", d.Digest, got, diffID, errdefs.ErrDigestMismatch)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644, Size: n}); err != nil {
		return err
	}
	_, err = io.Copy(tw, f)
	return err
}
