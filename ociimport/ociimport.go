// Package ociimport imports an image from an OCI image layout directory (index.json → manifest →
// config + layers) into the store, verifying every digest on the way.
package ociimport

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// maxJSON bounds index, manifest and config blobs.
const maxJSON = 8 << 20

// Result is what Import stored.
type Result struct {
	Image store.Image
	// Name is the ref set, and NewLayers how many layers were not stored before.
	Name      string
	NewLayers int
}

// Import imports the image tagged tag (the org.opencontainers.image.ref.name annotation; empty:
// the layout's only image) from the layout in dir and points ref name at it (empty: the tag, or
// the layout's ref name). It holds the store's shared lock throughout, so gc never sees a half
// imported image; objects → layers → image → ref are written in that order.
func Import(ctx context.Context, s *store.Store, dir, tag, name string) (Result, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Result{}, err
	}
	defer unlock()

	l := layout{dir: dir}
	var idx ocispec.Index
	if err := l.readJSON(filepath.Join(dir, "index.json"), &idx); err != nil {
		return Result{}, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	desc, refName, err := pick(idx.Manifests, tag)
	if err != nil {
		return Result{}, fmt.Errorf("OCI layout %s: %w", dir, err)
	}
	// Follow image indexes down to a manifest for this platform.
	for depth := 0; desc.MediaType == ocispec.MediaTypeImageIndex || desc.MediaType == "application/vnd.docker.distribution.manifest.list.v2+json"; depth++ {
		if depth > 4 {
			return Result{}, fmt.Errorf("OCI layout %s: indexes nested too deep: %w", dir, errdefs.ErrInvalid)
		}
		var sub ocispec.Index
		if err := l.readBlobJSON(desc, &sub); err != nil {
			return Result{}, err
		}
		if desc, err = platformManifest(sub.Manifests); err != nil {
			return Result{}, fmt.Errorf("OCI layout %s: %w", dir, err)
		}
	}
	manifest, err := l.readBlob(desc, maxJSON)
	if err != nil {
		return Result{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(manifest, &m); err != nil {
		return Result{}, fmt.Errorf("manifest %s: %v: %w", desc.Digest, err, errdefs.ErrInvalid)
	}
	config, err := l.readBlob(m.Config, maxJSON)
	if err != nil {
		return Result{}, err
	}
	img, err := store.ParseImage(manifest, config)
	if err != nil {
		return Result{}, err
	}
	res := Result{Name: name}
	if res.Name == "" {
		res.Name = refName
	}
	if res.Name == "" {
		return Result{}, fmt.Errorf("OCI layout %s: the image has no ref name; give one: %w", dir, errdefs.ErrInvalid)
	}
	for i, ld := range m.Layers {
		diffID := img.Layers[i]
		if s.HasLayer(diffID) {
			continue
		}
		if err := l.importLayer(ctx, s, ld, diffID); err != nil {
			return Result{}, err
		}
		res.NewLayers++
	}
	if res.Image, err = s.PutImage(ctx, manifest, config); err != nil {
		return Result{}, err
	}
	if err := s.SetRef(ctx, res.Name, res.Image.ID); err != nil {
		return Result{}, err
	}
	return res, nil
}

func pick(ms []ocispec.Descriptor, tag string) (ocispec.Descriptor, string, error) {
	var found []ocispec.Descriptor
	for _, m := range ms {
		if tag == "" || m.Annotations[ocispec.AnnotationRefName] == tag {
			found = append(found, m)
		}
	}
	switch {
	case len(found) == 1:
		return found[0], found[0].Annotations[ocispec.AnnotationRefName], nil
	case len(found) == 0 && tag != "":
		return ocispec.Descriptor{}, "", fmt.Errorf("no image named %q: %w", tag, errdefs.ErrNotFound)
	case len(found) == 0:
		return ocispec.Descriptor{}, "", fmt.Errorf("no images: %w", errdefs.ErrNotFound)
	}
	return ocispec.Descriptor{}, "", fmt.Errorf("%d images match %q; name one: %w", len(found), tag, errdefs.ErrInvalid)
}

func platformManifest(ms []ocispec.Descriptor) (ocispec.Descriptor, error) {
	for _, m := range ms {
		if m.Platform == nil || (m.Platform.OS == "linux" && m.Platform.Architecture == runtime.GOARCH) {
			return m, nil
		}
	}
	return ocispec.Descriptor{}, fmt.Errorf("no manifest for linux/%s: %w", runtime.GOARCH, errdefs.ErrNotFound)
}

type layout struct{ dir string }

// blobPath maps a descriptor to its file, refusing anything but a plain sha256 blob name.
func (l layout) blobPath(d ocispec.Descriptor) (string, error) {
	if err := d.Digest.Validate(); err != nil || d.Digest.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("blob digest %q: %w", d.Digest, errdefs.ErrInvalid)
	}
	if d.Size < 0 {
		return "", fmt.Errorf("blob %s: size %d: %w", d.Digest, d.Size, errdefs.ErrInvalid)
	}
	return filepath.Join(l.dir, "blobs", "sha256", d.Digest.Encoded()), nil
}

func (l layout) open(d ocispec.Descriptor) (*verifier, error) {
	p, err := l.blobPath(d)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("blob %s: %w", d.Digest, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("blob %s: %w", d.Digest, err)
	}
	return &verifier{f: f, r: io.LimitReader(f, d.Size+1), h: sha256.New(), want: d}, nil
}

func (l layout) readBlob(d ocispec.Descriptor, limit int64) ([]byte, error) {
	if d.Size > limit {
		return nil, fmt.Errorf("blob %s: %d bytes, over the %d-byte bound: %w", d.Digest, d.Size, limit, errdefs.ErrInvalid)
	}
	v, err := l.open(d)
	if err != nil {
		return nil, err
	}
	defer v.Close()
	return io.ReadAll(v)
}

func (l layout) readBlobJSON(d ocispec.Descriptor, v any) error {
	b, err := l.readBlob(d, maxJSON)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("blob %s: %v: %w", d.Digest, err, errdefs.ErrInvalid)
	}
	return nil
}

func (l layout) readJSON(p string, v any) error {
	f, err := os.Open(p)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", filepath.Base(p), errdefs.ErrNotFound)
		}
		return err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return err
	}
	if len(b) > maxJSON {
		return fmt.Errorf("%s: over %d bytes: %w", filepath.Base(p), maxJSON, errdefs.ErrInvalid)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %v: %w", filepath.Base(p), err, errdefs.ErrInvalid)
	}
	return nil
}

func (l layout) importLayer(ctx context.Context, s *store.Store, d ocispec.Descriptor, diffID digest.Digest) error {
	v, err := l.open(d)
	if err != nil {
		return err
	}
	defer v.Close()
	if _, err := layer.Import(ctx, s, v, layer.Options{DiffID: diffID}); err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	// The decompressor may stop before the end of the blob: read the rest so the blob digest is
	// checked too. (The layer itself is already verified by its DiffID.)
	if _, err := io.Copy(io.Discard, v); err != nil {
		return fmt.Errorf("layer %s: %w", d.Digest, err)
	}
	return nil
}

// verifier reads a blob, failing at EOF when its size or digest differ from the descriptor.
type verifier struct {
	f    *os.File
	r    io.Reader
	h    hash.Hash
	n    int64
	want ocispec.Descriptor
}

func (v *verifier) Read(p []byte) (int, error) {
	n, err := v.r.Read(p)
	v.h.Write(p[:n])
	v.n += int64(n)
	if v.n > v.want.Size {
		return n, fmt.Errorf("blob %s: more than %d bytes: %w", v.want.Digest, v.want.Size, errdefs.ErrDigestMismatch)
	}
	if err == io.EOF {
		if v.n != v.want.Size {
			return n, fmt.Errorf("blob %s: %d bytes, expected %d: %w", v.want.Digest, v.n, v.want.Size, errdefs.ErrDigestMismatch)
		}
		if got := digest.NewDigest(digest.SHA256, v.h); got != v.want.Digest {
			return n, fmt.Errorf("blob %s: content hashes to %s: %w", v.want.Digest, got, errdefs.ErrDigestMismatch)
		}
	}
	return n, err
}

func (v *verifier) Close() error { return v.f.Close() }
