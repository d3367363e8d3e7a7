package imageref

import (
	"fmt"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// ArchiveRef is an image in a file or directory in one of skopeo's local formats:
// "docker-archive:PATH[:REF]", "oci-archive:PATH[:REF]", "dir:PATH". Only the commands that read
// these accept them (through ParseArchive); Parse still reports them unsupported.
type ArchiveRef struct {
	// Transport is "docker-archive", "oci-archive" or "dir".
	Transport string
	Path      string
	// Ref picks an image of the archive: a RepoTags entry (docker-archive) or an
	// org.opencontainers.image.ref.name (oci-archive). Empty: the archive's only image.
	Ref string
}

// String returns the reference as typed.
func (r ArchiveRef) String() string {
	if r.Ref == "" {
		return r.Transport + ":" + r.Path
	}
	return r.Transport + ":" + r.Path + ":" + r.Ref
}

// ParseArchive parses s if it names one of the local formats; ok is false for anything else.
// As in skopeo, PATH ends at the first ':' (dir: takes the rest whole).
func ParseArchive(s string) (ref ArchiveRef, ok bool, err error) {
	transport, rest, found := strings.Cut(s, ":")
	if !found || (transport != "docker-archive" && transport != "oci-archive" && transport != "dir") {
		return ArchiveRef{}, false, nil
	}
	if len(s) > maxRefLen || strings.ContainsRune(s, 0) {
		return ArchiveRef{}, true, fmt.Errorf("image reference %q: too long or with a NUL byte: %w", s, errdefs.ErrInvalid)
	}
	ref = ArchiveRef{Transport: transport, Path: rest}
	if transport != "dir" {
		ref.Path, ref.Ref, _ = strings.Cut(rest, ":")
	}
	if ref.Path == "" {
		return ArchiveRef{}, true, fmt.Errorf("image reference %q: no path: %w", s, errdefs.ErrInvalid)
	}
	return ref, true, nil
}
