// Package ocilayout reads and writes OCI image layout directories (oci-layout, index.json,
// blobs/<alg>/<hex>), verifying every blob it reads against its descriptor.
package ocilayout

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/verify"
	"github.com/kura-oci/kura/source"
)

// MaxJSON bounds index, manifest and config blobs.
const MaxJSON = 8 << 20

// Layout is an OCI image layout directory.
type Layout struct {
	Dir string
}

// BlobPath is where the blob with digest d lives (whether or not it exists).
func (l Layout) BlobPath(d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("blob digest %q: %v: %w", d, err, errdefs.ErrInvalid)
	}
	return filepath.Join(l.Dir, "blobs", d.Algorithm().String(), d.Encoded()), nil
}

// Index reads index.json.
func (l Layout) Index() (ocispec.Index, error) {
	var idx ocispec.Index
	b, err := readLimited(filepath.Join(l.Dir, "index.json"), MaxJSON)
	if err != nil {
		return idx, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
	}
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("OCI layout %s: index.json: %v: %w", l.Dir, err, errdefs.ErrInvalid)
	}
	return idx, nil
}

// Resolve finds the image named tag (empty: the layout's only image), following indexes down to
// the manifest for linux and this host's architecture. The image is named by its
// org.opencontainers.image.ref.name annotation in index.json, if any.
func (l Layout) Resolve(tag string) (*source.Image, error) {
	idx, err := l.Index()
	if err != nil {
		return nil, err
	}
	desc, err := pick(idx.Manifests, tag)
	if err != nil {
		return nil, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
	}
	r := &source.Image{Name: desc.Annotations[ocispec.AnnotationRefName]}
	for depth := 0; isIndex(desc.MediaType); depth++ {
		if depth > 4 {
			return nil, fmt.Errorf("OCI layout %s: indexes nested too deep: %w", l.Dir, errdefs.ErrInvalid)
		}
		b, err := l.ReadBlob(desc, MaxJSON)
		if err != nil {
			return nil, err
		}
		var sub ocispec.Index
		if err := json.Unmarshal(b, &sub); err != nil {
			return nil, fmt.Errorf("index %s: %v: %w", desc.Digest, err, errdefs.ErrInvalid)
		}
		idxDesc := desc
		r.Index = &idxDesc
		if desc, err = platformManifest(sub.Manifests); err != nil {
			return nil, fmt.Errorf("OCI layout %s: %w", l.Dir, err)
		}
	}
	r.Descriptor = desc
	if r.ManifestBytes, err = l.ReadBlob(desc, MaxJSON); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(r.ManifestBytes, &r.Manifest); err != nil {
		return nil, fmt.Errorf("manifest %s: %v: %w", desc.Digest, err, errdefs.ErrInvalid)
	}
	if r.ConfigBytes, err = l.ReadBlob(r.Manifest.Config, MaxJSON); err != nil {
		return nil, err
	}
	if err := json.Unmarshal(r.ConfigBytes, &r.Config); err != nil {
		return nil, fmt.Errorf("config %s: %v: %w", r.Manifest.Config.Digest, err, errdefs.ErrInvalid)
	}
	return r, nil
}

func isIndex(mt string) bool {
	return mt == ocispec.MediaTypeImageIndex || mt == "application/vnd.docker.distribution.manifest.list.v2+json"
}

func pick(ms []ocispec.Descriptor, tag string) (ocispec.Descriptor, error) {
	var found []ocispec.Descriptor
	for _, m := range ms {
		if tag == "" || m.Annotations[ocispec.AnnotationRefName] == tag {
			found = append(found, m)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], nil
	case len(found) == 0 && tag != "":
		return ocispec.Descriptor{}, fmt.Errorf("no image named %q: %w", tag, errdefs.ErrNotFound)
	case len(found) == 0:
		return ocispec.Descriptor{}, fmt.Errorf("no images: %w", errdefs.ErrNotFound)
	}
	return ocispec.Descriptor{}, fmt.Errorf("%d images match %q; name one: %w", len(found), tag, errdefs.ErrInvalid)
}

func platformManifest(ms []ocispec.Descriptor) (ocispec.Descriptor, error) {
	for _, m := range ms {
		if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH) {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest for linux/%s: %w", runtime.GOARCH, errdefs.ErrNotFound)
}

// OpenBlob opens a blob for reading at random offsets. It checks the size; the content is
// verified by whoever reads it (ReadBlob and Verified do).
func (l Layout) OpenBlob(desc ocispec.Descriptor) (*os.File, error) {
	p, err := l.BlobPath(desc.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("blob %s: %w", desc.Digest, errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() != desc.Size {
		f.Close()
		return nil, fmt.Errorf("blob %s: %d bytes on disk, descriptor says %d: %w", desc.Digest, st.Size(), desc.Size, errdefs.ErrDigestMismatch)
	}
	return f, nil
}

// Verified returns a reader of the whole blob that fails at EOF unless size and digest match.
func (l Layout) Verified(desc ocispec.Descriptor) (io.ReadCloser, error) {
	f, err := l.OpenBlob(desc)
	if err != nil {
		return nil, err
	}
	return verify.ReadCloser(f, desc.Size, desc.Digest), nil
}

// ReadBlob reads a whole small blob, verified.
func (l Layout) ReadBlob(desc ocispec.Descriptor, limit int64) ([]byte, error) {
	if desc.Size < 0 || desc.Size > limit {
		return nil, fmt.Errorf("blob %s: %d bytes, limit %d: %w", desc.Digest, desc.Size, limit, errdefs.ErrInvalid)
	}
	rc, err := l.Verified(desc)
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return io.ReadAll(rc)
}

func readLimited(p string, limit int64) ([]byte, error) {
	f, err := os.Open(p)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", filepath.Base(p), errdefs.ErrNotFound)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, limit+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > limit {
		return nil, fmt.Errorf("%s: over %d bytes: %w", filepath.Base(p), limit, errdefs.ErrInvalid)
	}
	return b, nil
}

// Writer adds blobs and images to a layout, creating it if needed.
type Writer struct {
	l Layout
}

// Create opens (or creates) a layout for writing.
func Create(dir string) (*Writer, error) {
	if err := os.MkdirAll(filepath.Join(dir, "blobs", "sha256"), 0o755); err != nil {
		return nil, err
	}
	p := filepath.Join(dir, "oci-layout")
	if _, err := os.Stat(p); errors.Is(err, fs.ErrNotExist) {
		if err := writeAtomic(p, []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
			return nil, err
		}
	}
	return &Writer{l: Layout{Dir: dir}}, nil
}

// Layout returns the layout being written.
func (w *Writer) Layout() Layout { return w.l }

// PutBlob stores b under its digest.
func (w *Writer) PutBlob(b []byte) (ocispec.Descriptor, error) {
	d := digest.FromBytes(b)
	p, _ := w.l.BlobPath(d)
	if _, err := os.Stat(p); err == nil {
		return ocispec.Descriptor{Digest: d, Size: int64(len(b))}, nil
	}
	return ocispec.Descriptor{Digest: d, Size: int64(len(b))}, writeAtomic(p, b)
}

// PutBlobFrom stores the blob read from r, which must hash to want (if given). It returns the
// descriptor (digest and size) of what was written.
func (w *Writer) PutBlobFrom(r io.Reader, want digest.Digest) (ocispec.Descriptor, error) {
	tmp, err := os.CreateTemp(filepath.Join(w.l.Dir, "blobs"), ".tmp-")
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	defer os.Remove(tmp.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(tmp, h), r)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	d := digest.NewDigest(digest.SHA256, h)
	if want != "" && d != want {
		return ocispec.Descriptor{}, fmt.Errorf("blob: content hashes to %s, expected %s: %w", d, want, errdefs.ErrDigestMismatch)
	}
	p, _ := w.l.BlobPath(d)
	if err := os.Rename(tmp.Name(), p); err != nil {
		return ocispec.Descriptor{}, err
	}
	return ocispec.Descriptor{Digest: d, Size: n}, nil
}

// AddManifest records a manifest descriptor in index.json, named refName (replacing any
// manifest with that name).
func (w *Writer) AddManifest(desc ocispec.Descriptor, refName string) error {
	idx, err := w.l.Index()
	if errors.Is(err, errdefs.ErrNotFound) {
		idx, err = ocispec.Index{MediaType: ocispec.MediaTypeImageIndex}, nil
		idx.SchemaVersion = 2
	}
	if err != nil {
		return err
	}
	if refName != "" {
		if desc.Annotations == nil {
			desc.Annotations = map[string]string{}
		}
		desc.Annotations[ocispec.AnnotationRefName] = refName
		kept := idx.Manifests[:0]
		for _, m := range idx.Manifests {
			if m.Annotations[ocispec.AnnotationRefName] != refName {
				kept = append(kept, m)
			}
		}
		idx.Manifests = kept
	}
	idx.Manifests = append(idx.Manifests, desc)
	b, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	return writeAtomic(filepath.Join(w.l.Dir, "index.json"), b)
}

func writeAtomic(p string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(p), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, bytes.NewReader(b)); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), p)
}
