package archive

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/iocount"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarstream"
)

// Bounds on hostile archives: entries (a tar of metadata files and layer blobs), and how far a
// compressed archive may expand (image layers inside are compressed already, or nearly so when
// podman save writes them as plain tars; a bomb expands by thousands).
const (
	maxEntries = 100000
	maxRatio   = 100
)

// Load reads an image archive (docker-archive or oci-archive; plain, gzip or zstd) from r into
// the store, as podman load does: every image under each of its names (RepoTags, or the OCI ref
// names). The archive is unpacked into a directory under tmpDir (removed after), a
// docker-archive turned into an OCI layout there, and each image imported through ociimport,
// which verifies every blob digest and every layer's DiffID. It takes the whole store, as
// ociimport does: an import writes both roles (objects, then layers, image, ref) under its lock.
func Load(ctx context.Context, s *store.Store, r io.Reader, tmpDir string) ([]ociimport.Result, error) {
	dir, err := os.MkdirTemp(tmpDir, "kura-load-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	x := filepath.Join(dir, "x")
	if err := Extract(r, x); err != nil {
		return nil, err
	}
	layout, _, err := toLayout(x, filepath.Join(dir, "layout"), -1)
	if err != nil {
		return nil, err
	}
	names, err := ociNames(ocilayout.Layout{Dir: layout})
	if err != nil {
		return nil, err
	}
	var res []ociimport.Result
	for _, n := range names {
		one, err := ociimport.Import(ctx, s, layout, n, n)
		if err != nil {
			return res, fmt.Errorf("image %s: %w", n, err)
		}
		res = append(res, one)
	}
	return res, nil
}

// toLayout returns the OCI layout of the unpacked archive in x (x itself for an oci-archive, one
// built in out for a docker-archive) and the archive's kind. only, if not negative, keeps only
// the docker-archive's image at that position in its manifest.json (skopeo's :@N).
func toLayout(x, out string, only int) (string, Kind, error) {
	if exists(filepath.Join(x, "oci-layout")) && exists(filepath.Join(x, "index.json")) {
		if only >= 0 {
			return "", OCI, fmt.Errorf(":@%d picks an image of a docker-archive; this is an oci-archive: %w", only, errdefs.ErrInvalid)
		}
		return x, OCI, nil
	}
	if exists(filepath.Join(x, "manifest.json")) {
		return out, Docker, dockerToLayout(x, out, only)
	}
	return "", None, fmt.Errorf("not an image archive (no manifest.json, nor oci-layout and index.json): %w", errdefs.ErrInvalid)
}

func exists(p string) bool {
	fi, err := os.Lstat(p)
	return err == nil && fi.Mode().IsRegular()
}

// ociNames lists the ref names of an OCI layout's images; every image must have one.
func ociNames(l ocilayout.Layout) ([]string, error) {
	idx, err := l.Index()
	if err != nil {
		return nil, err
	}
	var names []string
	for _, m := range idx.Manifests {
		n := m.Annotations[ocispec.AnnotationRefName]
		if n == "" {
			return nil, fmt.Errorf("image %s has no name (no RepoTags, no %s); kura load needs one, kura import docker-archive:PATH NAME can give it: %w", m.Digest, ocispec.AnnotationRefName, errdefs.ErrInvalid)
		}
		names = append(names, n)
	}
	if len(names) == 0 {
		return nil, fmt.Errorf("the archive holds no images: %w", errdefs.ErrInvalid)
	}
	return names, nil
}

// dockerImage is one entry of a docker-archive's manifest.json.
type dockerImage struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// dockerToLayout writes the images of the docker-archive unpacked in x as an OCI layout in out:
// the config and layer files become blobs (hard links, no copy), and each image gets a manifest
// named by each of its RepoTags (none: one manifest without a name). only, if not negative,
// keeps the image at that position alone.
func dockerToLayout(x, out string, only int) error {
	b, err := os.ReadFile(filepath.Join(x, "manifest.json"))
	if err != nil {
		return err
	}
	var images []dockerImage
	if len(b) > maxMeta || json.Unmarshal(b, &images) != nil || len(images) == 0 {
		return fmt.Errorf("docker-archive: manifest.json is no list of images: %w", errdefs.ErrInvalid)
	}
	if only >= len(images) {
		return fmt.Errorf("docker-archive: no image @%d: the archive holds %d (@0 to @%d): %w", only, len(images), len(images)-1, errdefs.ErrNotFound)
	}
	if only >= 0 {
		images = images[only : only+1]
	}
	w, err := ocilayout.Create(out)
	if err != nil {
		return err
	}
	b2l := &blobLinker{w: w, x: x, done: map[string]ocispec.Descriptor{}}
	for _, img := range images {
		desc, err := dockerManifest(b2l, img)
		if err != nil {
			return err
		}
		tags := img.RepoTags
		if len(tags) == 0 {
			tags = []string{""}
		}
		for _, tag := range tags {
			if err := w.AddManifest(desc, tag); err != nil {
				return err
			}
		}
	}
	return nil
}

// dockerManifest writes the OCI manifest of one docker-archive image and returns its descriptor.
func dockerManifest(b *blobLinker, img dockerImage) (ocispec.Descriptor, error) {
	cfg, err := b.link(img.Config)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest}
	m.SchemaVersion = 2
	m.Config = ocispec.Descriptor{MediaType: ocispec.MediaTypeImageConfig, Digest: cfg.Digest, Size: cfg.Size}
	for _, p := range img.Layers {
		d, err := b.link(p)
		if err != nil {
			return ocispec.Descriptor{}, err
		}
		m.Layers = append(m.Layers, d)
	}
	mb, err := json.Marshal(m)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d, err := b.w.PutBlob(mb)
	d.MediaType = ocispec.MediaTypeImageManifest
	return d, err
}

// blobLinker makes files of the unpacked archive in x blobs of the layout w, hashing each file
// once however many images list it.
type blobLinker struct {
	w    *ocilayout.Writer
	x    string
	done map[string]ocispec.Descriptor
}

func (b *blobLinker) link(rel string) (ocispec.Descriptor, error) {
	p := inside(b.x, rel)
	if d, ok := b.done[p]; ok {
		return d, nil
	}
	d, err := linkBlob(b.w, p, rel)
	if err == nil {
		b.done[p] = d
	}
	return d, err
}

// linkBlob makes the archive file at p (named rel in the archive) a blob of the layout, named by
// its digest, and returns its descriptor; the media type says how a layer is compressed.
func linkBlob(w *ocilayout.Writer, p, rel string) (ocispec.Descriptor, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return ocispec.Descriptor{}, fmt.Errorf("docker-archive: %q is missing: %w", rel, errdefs.ErrInvalid)
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer f.Close()
	head := make([]byte, tarstream.SniffLen)
	n, _ := io.ReadFull(f, head)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return ocispec.Descriptor{}, err
	}
	h := sha256.New()
	size, err := io.Copy(h, f)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := ocispec.Descriptor{MediaType: layerType(head[:n]), Digest: digest.NewDigest(digest.SHA256, h), Size: size}
	bp, _ := w.Layout().BlobPath(d.Digest)
	if err := os.Link(p, bp); err != nil && !errors.Is(err, fs.ErrExist) {
		return ocispec.Descriptor{}, err
	}
	return d, nil
}

func layerType(head []byte) string {
	switch tarstream.Sniff(head) {
	case tarstream.Gzip:
		return ocispec.MediaTypeImageLayerGzip
	case tarstream.Zstd:
		return ocispec.MediaTypeImageLayerZstd
	}
	return ocispec.MediaTypeImageLayer
}

// Extract unpacks the archive read from r into dir: directories and regular files only, links
// (docker save links repeated layers) as hard links to files already unpacked. Every name is
// confined to dir; the entries are bounded in number.
func Extract(r io.Reader, dir string) error {
	raw := &iocount.Reader{R: r}
	plain, err := tarstream.Decompress(raw)
	if err != nil {
		return err
	}
	defer plain.Close()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	tr := tar.NewReader(&bounded{raw: raw, r: plain})
	for n := 0; ; n++ {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("archive: %v: %w", err, errdefs.ErrInvalid)
		}
		if n >= maxEntries {
			return fmt.Errorf("archive: over %d entries: %w", maxEntries, errdefs.ErrInvalid)
		}

		if err := extractEntry(tr, hdr, dir); err != nil {
			return fmt.Errorf("archive entry %q: %w", hdr.Name, err)
		}
	}
}

// bounded reads the decompressed archive and fails once it expands over maxRatio times the
// compressed bytes read (plus 1 MiB), so a bomb stops before it fills the disk.
type bounded struct {
	raw *iocount.Reader
	r   io.Reader
	n   int64
}

func (b *bounded) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.n += int64(n)
	if b.n > maxRatio*b.raw.N+1<<20 {
		return n, fmt.Errorf("archive: expands over %d times its compressed size: %w", maxRatio, errdefs.ErrInvalid)
	}
	return n, err
}

// inside returns the path under dir of the archive name (cleaned, so it cannot leave dir).
func inside(dir, name string) string {
	return filepath.Join(dir, filepath.FromSlash(path.Clean("/"+name)))
}

func extractEntry(tr *tar.Reader, hdr *tar.Header, dir string) error {
	p := inside(dir, hdr.Name)
	switch hdr.Typeflag {
	case tar.TypeDir:
		return os.MkdirAll(p, 0o700)
	case tar.TypeReg:
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			return fmt.Errorf("%v: %w", err, errdefs.ErrInvalid)
		}
		_, err = io.Copy(f, tr)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		return err
	case tar.TypeLink, tar.TypeSymlink:
		target := hdr.Linkname
		if hdr.Typeflag == tar.TypeSymlink && !path.IsAbs(target) {
			target = path.Join(path.Dir(path.Clean("/"+hdr.Name)), target)
		}
		src := inside(dir, target)
		if !exists(src) {
			return fmt.Errorf("link to %q, not a file unpacked before: %w", hdr.Linkname, errdefs.ErrInvalid)
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return err
		}
		return os.Link(src, p)
	}
	return nil // other types (devices, fifos) carry nothing an image archive needs
}
