package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/kura-oci/kura/archive"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// openArchiveArg presents a docker-archive:, oci-archive: or dir: source as an oci: reference
// to a temporary layout (removed by done), so that copy, pull and import read these transports
// through their OCI layout path, verified the same way. Any other argument is returned as is.
func openArchiveArg(arg string) (ociArg string, done func(), err error) {
	ref, ok, err := imageref.ParseArchive(arg)
	if err != nil {
		return "", nil, refError(err)
	}
	if !ok {
		return arg, func() {}, nil
	}
	o, err := archive.Open(ref, "")
	if err != nil {
		return "", nil, err
	}
	return o.Ref(), func() { o.Close() }, nil
}

// archiveDest presents a docker-archive:, oci-archive: or dir: destination as an oci: reference to a temporary
// layout; finish writes the archive or directory from it once the copy succeeded, and done
// removes the layout. Any other argument is returned as is (finish is nil).
func archiveDest(arg string) (ociArg string, finish func() error, done func(), err error) {
	ref, ok, err := imageref.ParseArchive(arg)
	if err != nil {
		return "", nil, nil, refError(err)
	}
	if !ok {
		return arg, nil, func() {}, nil
	}
	if strings.HasPrefix(ref.Ref, "@") {
		return "", nil, nil, fmt.Errorf("destination %s: :@N picks an image to read; a destination takes a name: %w", arg, errdefs.ErrInvalid)
	}
	if entries, err := os.ReadDir(ref.Path); ref.Transport == "dir" && err == nil && len(entries) > 0 {
		return "", nil, nil, fmt.Errorf("destination %s: the directory is not empty: %w", arg, errdefs.ErrInvalid)
	}
	tmp, err := os.MkdirTemp("", "kura-dest-")
	if err != nil {
		return "", nil, nil, err
	}
	layout := filepath.Join(tmp, "layout")
	finish = func() error {
		switch ref.Transport {
		case "dir":
			return archive.WriteDir(layout, ref.Ref, ref.Path)
		case "docker-archive":
			return archive.WriteDockerArchive(layout, "", ref.Ref, ref.Path)
		}
		return archive.WriteOCIArchive(layout, ref.Path)
	}
	ociArg = "oci:" + layout
	// A docker-archive's REF is a RepoTags entry (HOST/REPO:TAG), no layout tag: the layout
	// holds the one image.
	if ref.Ref != "" && ref.Transport != "docker-archive" {
		ociArg += ":" + ref.Ref
	}
	return ociArg, finish, func() { os.RemoveAll(tmp) }, nil
}
