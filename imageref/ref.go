// Package imageref owns image references as users type them: skopeo-style transport prefixes
// ("docker://", "oci:"), bare registry names, docker.io normalisation, and their canonical form.
package imageref

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// Transport says where an image lives.
type Transport string

const (
	// Docker is a registry speaking the OCI distribution API ("docker://HOST/REPO[:TAG|@DIGEST]").
	Docker Transport = "docker"
	// OCILayout is an OCI image layout directory ("oci:DIR[:NAME]").
	OCILayout Transport = "oci"
)

// DefaultTag is used when a registry reference names neither a tag nor a digest.
const DefaultTag = "latest"

// maxRefLen bounds the input; real references are far shorter.
const maxRefLen = 4096

// Repository names one repository in one registry, e.g. {"docker.io", "library/busybox"}.
type Repository struct {
	// Domain is the registry host[:port] as normalised ("docker.io" for Docker Hub).
	Domain string
	// Path is the repository path inside the registry ("library/busybox").
	Path string
}

// String returns "DOMAIN/PATH".
func (r Repository) String() string { return r.Domain + "/" + r.Path }

// Reference is a parsed image reference. For Docker, Domain and Path are set and at least one of
// Tag and Digest (Tag defaults to "latest"); when both are set the Digest is authoritative.
// For OCILayout, Dir is set and Tag holds the optional org.opencontainers.image.ref.name.
type Reference struct {
	Transport Transport
	Domain    string
	Path      string
	Tag       string
	Digest    digest.Digest
	Dir       string
}

// Repository returns the registry repository of a Docker reference.
func (r Reference) Repository() Repository { return Repository{Domain: r.Domain, Path: r.Path} }

// String returns the canonical form: "docker://docker.io/library/busybox:latest",
// "docker://quay.io/a/b@sha256:…", "oci:/dir:name".
func (r Reference) String() string {
	switch r.Transport {
	case OCILayout:
		if r.Tag == "" {
			return "oci:" + r.Dir
		}
		return "oci:" + r.Dir + ":" + r.Tag
	case Docker:
		s := "docker://" + r.Domain + "/" + r.Path
		if r.Tag != "" {
			s += ":" + r.Tag
		}
		if r.Digest != "" {
			s += "@" + r.Digest.String()
		}
		return s
	}
	return ""
}

// Identifier is what a registry's manifest endpoint is asked for: the digest when pinned, else the tag.
func (r Reference) Identifier() string {
	if r.Digest != "" {
		return r.Digest.String()
	}
	return r.Tag
}

// otherTransports are skopeo transport names Kura does not read; naming them gives a clear
// ErrUnsupported instead of a confusing parse of "dir:/x" as a Docker Hub name.
var otherTransports = map[string]bool{
	"dir": true, "docker-archive": true, "oci-archive": true, "containers-storage": true,
	"docker-daemon": true, "sif": true, "tarball": true, "ostree": true,
}

// IsOtherTransport reports a skopeo transport name Kura does not read ("dir", "docker-archive", …).
func IsOtherTransport(name string) bool { return otherTransports[name] }

// refName matches org.opencontainers.image.ref.name values (image-spec annotations.md):
// components of alphanumerics joined by one of [-._:@+] or "--", separated by "/".
var refName = regexp.MustCompile(`^[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*(?:/[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*)*$`)

// Parse parses a reference. Accepted forms:
//
//	docker://HOST/REPO[:TAG][@DIGEST]   (docker://busybox means docker.io/library/busybox:latest)
//	HOST/REPO[:TAG][@DIGEST]            (the same without the prefix)
//	oci:DIR[:NAME]                      (NAME is the org.opencontainers.image.ref.name)
//
// Errors wrap errdefs.ErrInvalid, or errdefs.ErrUnsupported for other known transports.
func Parse(s string) (Reference, error) {
	if len(s) > maxRefLen {
		return Reference{}, fmt.Errorf("image reference of %d bytes (limit %d): %w", len(s), maxRefLen, errdefs.ErrInvalid)
	}
	if s == "" {
		return Reference{}, fmt.Errorf("empty image reference: %w", errdefs.ErrInvalid)
	}
	if strings.ContainsRune(s, 0) {
		return Reference{}, fmt.Errorf("image reference %q contains a NUL byte: %w", s, errdefs.ErrInvalid)
	}
	if rest, ok := strings.CutPrefix(s, "docker://"); ok {
		return parseDocker(rest)
	}
	if rest, ok := strings.CutPrefix(s, "oci:"); ok {
		return parseOCI(rest)
	}
	if prefix, _, ok := strings.Cut(s, ":"); ok {
		if prefix == "docker" {
			return Reference{}, fmt.Errorf("image reference %q: the docker transport is written docker://HOST/REPO: %w", s, errdefs.ErrInvalid)
		}
		if otherTransports[prefix] {
			return Reference{}, fmt.Errorf("image reference %q: transport %q: %w", s, prefix, errdefs.ErrUnsupported)
		}
	}
	return parseDocker(s)
}

func parseDocker(s string) (Reference, error) {
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return Reference{}, fmt.Errorf("image reference %q: %v: %w", s, err, errdefs.ErrInvalid)
	}
	ref := Reference{Transport: Docker, Domain: reference.Domain(named), Path: reference.Path(named)}
	if t, ok := named.(reference.Tagged); ok {
		ref.Tag = t.Tag()
	}
	if d, ok := named.(reference.Digested); ok {
		ref.Digest = d.Digest()
		if err := ref.Digest.Validate(); err != nil {
			return Reference{}, fmt.Errorf("image reference %q: digest: %v: %w", s, err, errdefs.ErrInvalid)
		}
	}
	if ref.Tag == "" && ref.Digest == "" {
		ref.Tag = DefaultTag
	}
	return ref, nil
}

// parseOCI splits at the first colon, as skopeo does on Unix: a directory containing ':' cannot
// be named this way.
func parseOCI(s string) (Reference, error) {
	dir, name, hasName := strings.Cut(s, ":")
	if dir == "" {
		return Reference{}, fmt.Errorf("image reference \"oci:%s\": empty directory: %w", s, errdefs.ErrInvalid)
	}
	if hasName && !refName.MatchString(name) {
		return Reference{}, fmt.Errorf("image reference \"oci:%s\": %q is not a valid org.opencontainers.image.ref.name: %w", s, name, errdefs.ErrInvalid)
	}
	return Reference{Transport: OCILayout, Dir: dir, Tag: name}, nil
}
