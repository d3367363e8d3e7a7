package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// StatBlob asks whether repo has a blob (HEAD) and returns its size; errdefs.ErrNotFound if not.
func (c *Client) StatBlob(ctx context.Context, repo imageref.Repository, d digest.Digest) (ocispec.Descriptor, error) {
	if err := d.Validate(); err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("blob digest %q: %v: %w", d, err, errdefs.ErrInvalid)
	}
	rc, err := c.repo(ctx, repo, false)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, rc.url(repo, "blobs", d.String()), nil)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("stat blob %s: %v: %w", d, err, errdefs.ErrInvalid)
	}
	resp, err := rc.client.Do(req)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("stat blob %s in %s: %w", d, repo, err)
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, fmt.Errorf("stat blob %s in %s: %w", d, repo, newHTTPError(resp))
	}
	resp.Body.Close()
	return ocispec.Descriptor{Digest: d, Size: resp.ContentLength}, nil
}

// MountBlob asks the registry to link a blob from another repository of the same registry
// (POST ?mount=&from=). It reports false when the registry would rather have an upload.
func (c *Client) MountBlob(ctx context.Context, repo, from imageref.Repository, desc ocispec.Descriptor) (bool, error) {
	if from.Domain != repo.Domain {
		return false, nil
	}
	rc, err := c.repo(ctx, repo, true)
	if err != nil {
		return false, err
	}
	q := url.Values{"mount": {desc.Digest.String()}, "from": {from.Path}}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, rc.url(repo, "blobs", "uploads/")+"?"+q.Encode(), nil)
	if err != nil {
		return false, fmt.Errorf("mounting blob %s: %v: %w", desc.Digest, err, errdefs.ErrInvalid)
	}
	resp, err := rc.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("mounting blob %s from %s into %s: %w", desc.Digest, from, repo, err)
	}
	switch resp.StatusCode {
	case http.StatusCreated:
		resp.Body.Close()
		return true, nil
	case http.StatusAccepted:
		// An upload session was opened instead; it is abandoned (registries expire them).
		resp.Body.Close()
		return false, nil
	}
	return false, fmt.Errorf("mounting blob %s from %s into %s: %w", desc.Digest, from, repo, newHTTPError(resp))
}

// PushBlob uploads a blob unless the repository has it already (HEAD first); the upload itself is
// UploadBlob's: chunked, resumable, verified by the registry.
func (c *Client) PushBlob(ctx context.Context, repo imageref.Repository, desc ocispec.Descriptor, r io.ReaderAt) error {
	if err := checkDescriptor(desc); err != nil {
		return fmt.Errorf("pushing a blob to %s: %w", repo, err)
	}
	if _, err := c.StatBlob(ctx, repo, desc.Digest); err == nil {
		return nil
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	return c.UploadBlob(ctx, repo, desc, r, nil)
}

// PutManifest stores a manifest or index under tag (empty: by digest only) and returns its descriptor.
func (c *Client) PutManifest(ctx context.Context, repo imageref.Repository, tag, mediaType string, body []byte) (ocispec.Descriptor, error) {
	if int64(len(body)) > c.opts.maxManifestSize {
		return ocispec.Descriptor{}, fmt.Errorf("manifest of %d bytes is over the %d limit: %w", len(body), c.opts.maxManifestSize, errdefs.ErrInvalid)
	}
	desc := ocispec.Descriptor{MediaType: mediaType, Digest: digest.FromBytes(body), Size: int64(len(body))}
	ref := tag
	if ref == "" {
		ref = desc.Digest.String()
	}
	rc, err := c.repo(ctx, repo, true)
	if err != nil {
		return ocispec.Descriptor{}, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, rc.url(repo, "manifests", ref), bytes.NewReader(body))
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting manifest %s:%s: %v: %w", repo, ref, err, errdefs.ErrInvalid)
	}
	req.Header.Set("Content-Type", mediaType)
	resp, err := rc.client.Do(req)
	if err != nil {
		return ocispec.Descriptor{}, fmt.Errorf("putting manifest %s:%s: %w", repo, ref, err)
	}
	if resp.StatusCode != http.StatusCreated {
		return ocispec.Descriptor{}, fmt.Errorf("putting manifest %s:%s: %w", repo, ref, newHTTPError(resp))
	}
	resp.Body.Close()
	if hd, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && hd != desc.Digest {
		return ocispec.Descriptor{}, fmt.Errorf("putting manifest %s:%s: registry stored %s, we sent %s: %w", repo, ref, hd, desc.Digest, errdefs.ErrDigestMismatch)
	}
	return desc, nil
}
