package push

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/registry"
)

// What happened to one blob, as reported.
const (
	StatusUploaded  = "uploaded"  // sent to the registry
	StatusExisted   = "existed"   // the registry had it (HEAD)
	StatusMounted   = "mounted"   // linked from another repository of the registry
	StatusWritten   = "written"   // stored in an OCI layout
	StatusDuplicate = "duplicate" // the same layer appears earlier in the image
)

// WriteFunc writes one blob to w and returns its descriptor. A Destination calls it once.
type WriteFunc func(w io.Writer) (chunked.Descriptor, error)

// Destination is where converted images go: a registry repository or an OCI layout.
type Destination interface {
	// PutLayer stores the blob that write produces, whose digest is known only once it is
	// written, and says what it did. progress is told of bytes sent or stored.
	PutLayer(ctx context.Context, write WriteFunc, progress func(int64)) (chunked.Descriptor, string, error)
	// CopyBlob stores a blob of known digest unchanged. Nothing is read when the destination
	// has it or can mount it; otherwise open streams it, checked against desc.
	CopyBlob(ctx context.Context, desc ocispec.Descriptor, open func(context.Context) (io.ReadCloser, error)) (string, error)
	// PutBlob stores a small blob (the config).
	PutBlob(ctx context.Context, desc ocispec.Descriptor, data []byte) (string, error)
	// PutManifest stores the image manifest under the destination's name.
	PutManifest(ctx context.Context, desc ocispec.Descriptor, body []byte) error
	// PutUntagged stores a manifest an index names, by digest only.
	PutUntagged(ctx context.Context, desc ocispec.Descriptor, body []byte) error
	// String names the destination for reports.
	String() string
}

// NewDestination returns the Destination for a parsed reference. tempDir holds registry layers
// between compression and upload (their digest must be known before they are sent, so that a
// registry holding them already is not sent them again); empty means os.TempDir().
// mountFrom lists repositories of the same registry that may hold the blobs already.
func NewDestination(ref imageref.Reference, client *registry.Client, tempDir string, mountFrom ...imageref.Repository) (Destination, error) {
	switch ref.Transport {
	case imageref.Docker:
		if ref.Digest != "" {
			return nil, fmt.Errorf("destination %s: a push names a tag, not a digest: %w", ref, errdefs.ErrInvalid)
		}
		return &registryDest{c: client, ref: ref, tempDir: tempDir, mountFrom: mountFrom}, nil
	case imageref.OCILayout:
		w, err := ocilayout.Create(ref.Dir)
		if err != nil {
			return nil, fmt.Errorf("destination %s: %w", ref, err)
		}
		return &layoutDest{w: w, ref: ref}, nil
	}
	return nil, fmt.Errorf("destination %s: %w", ref, errdefs.ErrUnsupported)
}

type registryDest struct {
	c         *registry.Client
	ref       imageref.Reference
	tempDir   string
	mountFrom []imageref.Repository
}

func (d *registryDest) String() string { return d.ref.String() }

func (d *registryDest) PutLayer(ctx context.Context, write WriteFunc, progress func(int64)) (chunked.Descriptor, string, error) {
	f, err := os.CreateTemp(d.tempDir, "push-")
	if err != nil {
		return chunked.Descriptor{}, "", fmt.Errorf("staging a layer: %w", err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	desc, err := write(bw)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		return desc, "", err
	}
	status, err := d.put(ctx, ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, f, progress)
	return desc, status, err
}

func (d *registryDest) PutBlob(ctx context.Context, desc ocispec.Descriptor, data []byte) (string, error) {
	return d.put(ctx, desc, bytes.NewReader(data), nil)
}

// CopyBlob stages the source blob in a temporary file (an upload resumes from any offset) only
// when the registry neither has it nor can mount it; the source reader checks its digest and
// the registry checks it again.
func (d *registryDest) CopyBlob(ctx context.Context, desc ocispec.Descriptor, open func(context.Context) (io.ReadCloser, error)) (string, error) {
	if status, err := d.link(ctx, desc); status != "" || err != nil {
		return status, err
	}
	f, err := os.CreateTemp(d.tempDir, "copy-")
	if err != nil {
		return "", fmt.Errorf("staging blob %s: %w", desc.Digest, err)
	}
	defer os.Remove(f.Name())
	defer f.Close()
	rc, err := open(ctx)
	if err != nil {
		return "", err
	}
	n, err := io.Copy(f, io.LimitReader(rc, desc.Size+1))
	rc.Close()
	if err != nil {
		return "", fmt.Errorf("reading blob %s: %w", desc.Digest, err)
	}
	if n != desc.Size {
		return "", fmt.Errorf("blob %s: %d bytes, the manifest says %d: %w", desc.Digest, n, desc.Size, errdefs.ErrDigestMismatch)
	}
	if err := d.c.UploadBlob(ctx, d.ref.Repository(), desc, f, nil); err != nil {
		return "", err
	}
	return StatusUploaded, nil
}

// link reports StatusExisted or StatusMounted when the repository has the blob or can mount it
// from one of mountFrom, and "" when it must be sent.
func (d *registryDest) link(ctx context.Context, desc ocispec.Descriptor) (string, error) {
	repo := d.ref.Repository()
	if _, err := d.c.StatBlob(ctx, repo, desc.Digest); err == nil {
		return StatusExisted, nil
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return "", err
	}
	for _, from := range d.mountFrom {
		if from == repo {
			continue
		}
		// A failed mount is no failure of the push: the blob is uploaded instead.
		if ok, err := d.c.MountBlob(ctx, repo, from, desc); err == nil && ok {
			return StatusMounted, nil
		}
	}
	return "", nil
}

// put sends a blob unless the repository has it or can mount it.
func (d *registryDest) put(ctx context.Context, desc ocispec.Descriptor, blob io.ReaderAt, progress func(int64)) (string, error) {
	if status, err := d.link(ctx, desc); status != "" || err != nil {
		return status, err
	}
	if err := d.c.UploadBlob(ctx, d.ref.Repository(), desc, blob, progress); err != nil {
		return "", err
	}
	return StatusUploaded, nil
}

func (d *registryDest) PutManifest(ctx context.Context, desc ocispec.Descriptor, body []byte) error {
	_, err := d.c.PutManifest(ctx, d.ref.Repository(), d.ref.Tag, desc.MediaType, body)
	return err
}

func (d *registryDest) PutUntagged(ctx context.Context, desc ocispec.Descriptor, body []byte) error {
	_, err := d.c.PutManifest(ctx, d.ref.Repository(), "", desc.MediaType, body)
	return err
}

type layoutDest struct {
	w   *ocilayout.Writer
	ref imageref.Reference
}

func (d *layoutDest) String() string { return d.ref.String() }

// PutLayer streams the blob into the layout (which hashes it and renames it into place), with
// no staging copy.
func (d *layoutDest) PutLayer(ctx context.Context, write WriteFunc, _ func(int64)) (chunked.Descriptor, string, error) {
	pr, pw := io.Pipe()
	type result struct {
		desc chunked.Descriptor
		err  error
	}
	done := make(chan result, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20) // the bar follows compression; no upload to follow
		desc, err := write(bw)
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		done <- result{desc, err}
	}()
	stored, err := d.w.PutBlobFrom(pr, "")
	pr.CloseWithError(errors.New("layout write ended")) // unblocks the writer if PutBlobFrom failed
	res := <-done
	if res.err != nil {
		return res.desc, "", res.err
	}
	if err != nil {
		return res.desc, "", fmt.Errorf("writing layer %s to %s: %w", res.desc.Digest, d.ref, err)
	}
	if stored.Digest != res.desc.Digest || stored.Size != res.desc.Size {
		return res.desc, "", fmt.Errorf("layout stored %s (%d bytes), compressor wrote %s (%d bytes): %w",
			stored.Digest, stored.Size, res.desc.Digest, res.desc.Size, errdefs.ErrDigestMismatch)
	}
	return res.desc, StatusWritten, nil
}

// CopyBlob streams the blob into the layout unless it is there already; the layout checks
// the digest before the blob takes its name.
func (d *layoutDest) CopyBlob(ctx context.Context, desc ocispec.Descriptor, open func(context.Context) (io.ReadCloser, error)) (string, error) {
	p, err := d.w.Layout().BlobPath(desc.Digest)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(p); err == nil {
		return StatusExisted, nil
	}
	rc, err := open(ctx)
	if err != nil {
		return "", err
	}
	defer rc.Close()
	got, err := d.w.PutBlobFrom(io.LimitReader(rc, desc.Size+1), desc.Digest)
	if err != nil {
		return "", fmt.Errorf("writing blob %s to %s: %w", desc.Digest, d.ref, err)
	}
	if got.Size != desc.Size {
		return "", fmt.Errorf("blob %s: %d bytes, the manifest says %d: %w", desc.Digest, got.Size, desc.Size, errdefs.ErrDigestMismatch)
	}
	return StatusWritten, nil
}

func (d *layoutDest) PutBlob(ctx context.Context, desc ocispec.Descriptor, data []byte) (string, error) {
	got, err := d.w.PutBlob(data)
	if err != nil {
		return "", err
	}
	if got.Digest != desc.Digest {
		return "", fmt.Errorf("blob hashes to %s, expected %s: %w", got.Digest, desc.Digest, errdefs.ErrDigestMismatch)
	}
	return StatusWritten, nil
}

func (d *layoutDest) PutManifest(ctx context.Context, desc ocispec.Descriptor, body []byte) error {
	if _, err := d.PutBlob(ctx, desc, body); err != nil {
		return err
	}
	return d.w.AddManifest(ocispec.Descriptor{MediaType: desc.MediaType, Digest: desc.Digest, Size: desc.Size}, d.ref.Tag)
}

// PutUntagged stores the manifest as a blob: index.json names only the index.
func (d *layoutDest) PutUntagged(ctx context.Context, desc ocispec.Descriptor, body []byte) error {
	_, err := d.PutBlob(ctx, desc, body)
	return err
}
