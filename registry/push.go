package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"

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

// PushBlob uploads desc.Size bytes from r in chunks (POST, PATCH with Content-Range, PUT
// ?digest=), unless the repository has the blob already. The registry verifies the digest.
func (c *Client) PushBlob(ctx context.Context, repo imageref.Repository, desc ocispec.Descriptor, r io.Reader) error {
	if err := checkDescriptor(desc); err != nil {
		return fmt.Errorf("pushing a blob to %s: %w", repo, err)
	}
	if _, err := c.StatBlob(ctx, repo, desc.Digest); err == nil {
		return nil
	} else if !errors.Is(err, errdefs.ErrNotFound) {
		return err
	}
	rc, err := c.repo(ctx, repo, true)
	if err != nil {
		return err
	}
	loc, err := c.uploadStep(ctx, rc, http.MethodPost, rc.url(repo, "blobs", "uploads/"), nil, "", http.StatusAccepted)
	if err != nil {
		return fmt.Errorf("starting upload of %s to %s: %w", desc.Digest, repo, err)
	}
	buf := make([]byte, c.opts.chunkSize)
	var off int64
	for off < desc.Size {
		n, err := io.ReadFull(r, buf[:min(int64(len(buf)), desc.Size-off)])
		if err != nil {
			return fmt.Errorf("reading blob %s at %d: %w", desc.Digest, off, err)
		}
		cr := strconv.FormatInt(off, 10) + "-" + strconv.FormatInt(off+int64(n)-1, 10)
		if loc, err = c.uploadStep(ctx, rc, http.MethodPatch, loc, buf[:n], cr, http.StatusAccepted); err != nil {
			return fmt.Errorf("uploading %s bytes %s to %s: %w", desc.Digest, cr, repo, err)
		}
		off += int64(n)
	}
	u, err := url.Parse(loc)
	if err != nil {
		return fmt.Errorf("upload location %q: %v: %w", loc, err, errdefs.ErrInvalid)
	}
	q := u.Query()
	q.Set("digest", desc.Digest.String())
	u.RawQuery = q.Encode()
	if _, err := c.uploadStep(ctx, rc, http.MethodPut, u.String(), nil, "", http.StatusCreated); err != nil {
		return fmt.Errorf("finishing upload of %s to %s: %w", desc.Digest, repo, err)
	}
	return nil
}

// uploadStep sends one upload request and returns the absolute Location to continue at.
func (c *Client) uploadStep(ctx context.Context, rc *repoClient, method, u string, body []byte, contentRange string, want int) (string, error) {
	req, err := http.NewRequestWithContext(ctx, method, u, bytes.NewReader(body))
	if err != nil {
		return "", fmt.Errorf("%v: %w", err, errdefs.ErrInvalid)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if contentRange != "" {
		req.Header.Set("Content-Range", contentRange)
	}
	resp, err := rc.client.Do(req)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != want {
		return "", newHTTPError(resp)
	}
	resp.Body.Close()
	loc, err := resp.Request.URL.Parse(resp.Header.Get("Location"))
	if err != nil {
		return "", fmt.Errorf("upload Location %q: %v: %w", resp.Header.Get("Location"), err, errdefs.ErrInvalid)
	}
	return loc.String(), nil
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
