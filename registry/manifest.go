package registry

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strings"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/source"
)

// Docker schema 2 media types, accepted alongside the OCI ones.
const (
	MediaTypeDockerManifest     = "application/vnd.docker.distribution.manifest.v2+json"
	MediaTypeDockerManifestList = "application/vnd.docker.distribution.manifest.list.v2+json"
)

// maxLayers bounds the layers of one manifest; real images have tens.
const maxLayers = 4096

var acceptManifests = strings.Join([]string{
	ocispec.MediaTypeImageManifest, ocispec.MediaTypeImageIndex, MediaTypeDockerManifest, MediaTypeDockerManifestList,
}, ", ")

// IsIndex reports index media types (OCI index, Docker manifest list).
func IsIndex(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageIndex || mediaType == MediaTypeDockerManifestList
}

// IsManifest reports image manifest media types (OCI, Docker schema 2).
func IsManifest(mediaType string) bool {
	return mediaType == ocispec.MediaTypeImageManifest || mediaType == MediaTypeDockerManifest
}

// Resolve fetches the manifest a Docker reference names, choosing the configured platform from
// an index, and its config blob. A digest-pinned reference must match what was received. The
// image is named REPOSITORY:TAG, or REPOSITORY@DIGEST when the reference names no tag.
func (c *Client) Resolve(ctx context.Context, ref imageref.Reference) (*source.Image, error) {
	if ref.Transport != imageref.Docker {
		return nil, fmt.Errorf("resolving %s: not a registry reference: %w", ref, errdefs.ErrInvalid)
	}
	repo := ref.Repository()
	desc, body, err := c.GetManifest(ctx, repo, ref.Identifier())
	if err != nil {
		return nil, err
	}
	img := &source.Image{Name: imageName(ref)}
	if IsIndex(desc.MediaType) {
		idx, err := ParseIndex(body)
		if err != nil {
			return nil, fmt.Errorf("index %s of %s: %w", desc.Digest, ref, err)
		}
		child, err := SelectPlatform(idx, c.opts.platform)
		if err != nil {
			return nil, fmt.Errorf("index %s of %s: %w", desc.Digest, ref, err)
		}
		idxDesc := desc
		img.Index = &idxDesc
		mdesc, mbody, err := c.GetManifest(ctx, repo, child.Digest.String())
		if err != nil {
			return nil, err
		}
		if mdesc.Size != child.Size {
			return nil, fmt.Errorf("manifest %s of %s: index says %d bytes, got %d: %w", child.Digest, ref, child.Size, mdesc.Size, errdefs.ErrDigestMismatch)
		}
		if !IsManifest(mdesc.MediaType) {
			return nil, fmt.Errorf("manifest %s of %s: media type %q inside an index: %w", child.Digest, ref, mdesc.MediaType, errdefs.ErrUnsupported)
		}
		mdesc.Platform = child.Platform
		desc, body = mdesc, mbody
	}
	m, err := ParseManifest(body)
	if err != nil {
		return nil, fmt.Errorf("manifest %s of %s: %w", desc.Digest, ref, err)
	}
	img.Descriptor, img.ManifestBytes, img.Manifest = desc, body, m

	if m.Config.Size > c.opts.maxConfigSize {
		return nil, fmt.Errorf("config %s of %s: %d bytes is over the %d limit: %w", m.Config.Digest, ref, m.Config.Size, c.opts.maxConfigSize, errdefs.ErrInvalid)
	}
	rc, err := c.FetchBlob(ctx, repo, m.Config)
	if err != nil {
		return nil, fmt.Errorf("config of %s: %w", ref, err)
	}
	defer rc.Close()
	img.ConfigBytes, err = io.ReadAll(rc)
	if err != nil {
		return nil, fmt.Errorf("config %s of %s: %w", m.Config.Digest, ref, err)
	}
	if err := json.Unmarshal(img.ConfigBytes, &img.Config); err != nil {
		return nil, fmt.Errorf("config %s of %s: %v: %w", m.Config.Digest, ref, err, errdefs.ErrInvalid)
	}
	return img, nil
}

// imageName is the name a registry image is stored under unless the caller names it.
func imageName(ref imageref.Reference) string {
	if ref.Tag != "" {
		return ref.Repository().String() + ":" + ref.Tag
	}
	return ref.Repository().String() + "@" + ref.Digest.String()
}

// GetManifest fetches a manifest or index by tag or digest, bounded in size, and returns its
// descriptor (media type from the answer, digest computed from the bytes received). When ref is
// a digest the bytes must hash to it.
func (c *Client) GetManifest(ctx context.Context, repo imageref.Repository, ref string) (ocispec.Descriptor, []byte, error) {
	var pinned digest.Digest
	if strings.Contains(ref, ":") {
		d, err := digest.Parse(ref)
		if err != nil {
			return ocispec.Descriptor{}, nil, fmt.Errorf("manifest reference %q: %v: %w", ref, err, errdefs.ErrInvalid)
		}
		pinned = d
	}
	rc, err := c.repo(ctx, repo, false)
	if err != nil {
		return ocispec.Descriptor{}, nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, rc.url(repo, "manifests", ref), nil)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s@%s: %v: %w", repo, ref, err, errdefs.ErrInvalid)
	}
	req.Header.Set("Accept", acceptManifests)
	resp, err := rc.client.Do(req)
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("fetching manifest %s:%s: %w", repo, ref, err)
	}
	if resp.StatusCode != http.StatusOK {
		return ocispec.Descriptor{}, nil, fmt.Errorf("fetching manifest %s:%s: %w", repo, ref, newHTTPError(resp))
	}
	defer resp.Body.Close()
	limit := c.opts.maxManifestSize
	if resp.ContentLength > limit {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s is %d bytes, over the %d limit: %w", repo, ref, resp.ContentLength, limit, errdefs.ErrInvalid)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return ocispec.Descriptor{}, nil, fmt.Errorf("reading manifest %s:%s: %w", repo, ref, err)
	}
	if int64(len(body)) > limit {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s is over the %d byte limit: %w", repo, ref, limit, errdefs.ErrInvalid)
	}
	algo := digest.Canonical
	if pinned != "" {
		algo = pinned.Algorithm()
	}
	got := algo.FromBytes(body)
	if pinned != "" && got != pinned {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s@%s: received content has digest %s: %w", repo, pinned, got, errdefs.ErrDigestMismatch)
	}
	// A tag is trusted as far as the registry is, but a header contradicting the bytes is a sign
	// of a broken or hostile peer.
	if hd, err := digest.Parse(resp.Header.Get("Docker-Content-Digest")); err == nil && hd.Algorithm() == got.Algorithm() && hd != got {
		return ocispec.Descriptor{}, nil, fmt.Errorf("manifest %s:%s: Docker-Content-Digest %s but content hashes to %s: %w", repo, ref, hd, got, errdefs.ErrDigestMismatch)
	}
	mt := mediaTypeOf(resp.Header.Get("Content-Type"), body)
	return ocispec.Descriptor{MediaType: mt, Digest: got, Size: int64(len(body))}, body, nil
}

// mediaTypeOf prefers the body's mediaType field (it is what the digest covers), else Content-Type.
func mediaTypeOf(contentType string, body []byte) string {
	var probe struct {
		MediaType string `json:"mediaType"`
	}
	if json.Unmarshal(body, &probe) == nil && probe.MediaType != "" {
		return probe.MediaType
	}
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return ""
	}
	return mt
}

// ParseManifest decodes an OCI or Docker schema 2 image manifest and checks what later code relies
// on: schema version 2, a valid config descriptor, valid layer descriptors, bounded counts.
func ParseManifest(b []byte) (ocispec.Manifest, error) {
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("decoding manifest: %v: %w", err, errdefs.ErrInvalid)
	}
	if m.SchemaVersion != 2 {
		return m, fmt.Errorf("manifest schemaVersion %d (want 2): %w", m.SchemaVersion, errdefs.ErrUnsupported)
	}
	if m.MediaType != "" && !IsManifest(m.MediaType) {
		return m, fmt.Errorf("manifest mediaType %q: %w", m.MediaType, errdefs.ErrUnsupported)
	}
	if err := checkDescriptor(m.Config); err != nil {
		return m, fmt.Errorf("config: %w", err)
	}
	if len(m.Layers) > maxLayers {
		return m, fmt.Errorf("%d layers (limit %d): %w", len(m.Layers), maxLayers, errdefs.ErrInvalid)
	}
	for i, l := range m.Layers {
		if err := checkDescriptor(l); err != nil {
			return m, fmt.Errorf("layer %d: %w", i, err)
		}
	}
	return m, nil
}

// ParseIndex decodes an OCI index or Docker manifest list.
func ParseIndex(b []byte) (ocispec.Index, error) {
	var idx ocispec.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return idx, fmt.Errorf("decoding index: %v: %w", err, errdefs.ErrInvalid)
	}
	if idx.SchemaVersion != 2 {
		return idx, fmt.Errorf("index schemaVersion %d (want 2): %w", idx.SchemaVersion, errdefs.ErrUnsupported)
	}
	if idx.MediaType != "" && !IsIndex(idx.MediaType) {
		return idx, fmt.Errorf("index mediaType %q: %w", idx.MediaType, errdefs.ErrUnsupported)
	}
	if len(idx.Manifests) > maxLayers {
		return idx, fmt.Errorf("%d manifests in index (limit %d): %w", len(idx.Manifests), maxLayers, errdefs.ErrInvalid)
	}
	for i, d := range idx.Manifests {
		if err := checkDescriptor(d); err != nil {
			return idx, fmt.Errorf("manifest %d: %w", i, err)
		}
	}
	return idx, nil
}

func checkDescriptor(d ocispec.Descriptor) error {
	if err := d.Digest.Validate(); err != nil {
		return fmt.Errorf("digest %q: %v: %w", d.Digest, err, errdefs.ErrInvalid)
	}
	if d.Size < 0 {
		return fmt.Errorf("descriptor %s has size %d: %w", d.Digest, d.Size, errdefs.ErrInvalid)
	}
	return nil
}

// SelectPlatform returns the first index entry whose platform matches want: same OS and
// architecture, and the same variant when want names one (arm64's "" is "v8", amd64's "" is
// "v1", arm's "" is "v7"). Entries without a platform (e.g. attestations) never match.
func SelectPlatform(idx ocispec.Index, want ocispec.Platform) (ocispec.Descriptor, error) {
	var seen []string
	for _, d := range idx.Manifests {
		p := d.Platform
		if p == nil {
			continue
		}
		seen = append(seen, platformString(*p))
		if p.OS != want.OS || p.Architecture != want.Architecture {
			continue
		}
		if want.Variant != "" && normVariant(p.Architecture, p.Variant) != normVariant(want.Architecture, want.Variant) {
			continue
		}
		return d, nil
	}
	return ocispec.Descriptor{}, fmt.Errorf("no image for platform %s (index has %s): %w", platformString(want), strings.Join(seen, ", "), errdefs.ErrNotFound)
}

func normVariant(arch, v string) string {
	if v != "" {
		return v
	}
	switch arch {
	case "arm64":
		return "v8"
	case "amd64":
		return "v1"
	case "arm":
		return "v7"
	}
	return ""
}

func platformString(p ocispec.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}
