package main

import (
	"github.com/kura-oci/kura/archive"
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
