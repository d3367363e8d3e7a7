package pull

import (
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store/layer"
)

// explainDiffID turns a DiffID mismatch into an error a user can act on: what the layer is, what
// the two digests are, and what to do. Other errors pass unchanged. The error stays an
// errdefs.ErrDigestMismatch (exit 5): the image is inconsistent and nothing is stored.
func explainDiffID(desc ocispec.Descriptor, err error) error {
	var m *layer.DiffIDMismatchError
	if !errors.As(err, &m) {
		return err
	}
	what := fmt.Sprintf("layer %s (%s)", desc.Digest, desc.MediaType)
	origin := ""
	if chunked.IsChunked(desc.Annotations) {
		what = fmt.Sprintf("zstd:chunked layer %s", desc.Digest)
		origin = " Its annotations (" + chunkedAnnotation(desc.Annotations) + ") show it was written by" +
			" containers/storage's zstd:chunked writer; skopeo 1.9 and podman 4.3 wrote layers made by" +
			" `podman import` this way, with a DiffID that is not their tar's."
	}
	msg := fmt.Sprintf("%s decompresses to a tar with digest %s, but the image config lists DiffID %s:"+
		" the image is inconsistent and Kura stores nothing of it (%v).%s"+
		" To fix it, push the image again from where it was built with gzip compression"+
		" (`podman push --compression-format=gzip`), or from its root file system tar with"+
		" `kura import ROOTFS.tar NAME` and `kura push NAME HOST/REPO:TAG`; `kura copy` of this"+
		" image refuses it the same way", what, m.Got, m.Want, errdefs.ErrDigestMismatch, origin)
	return &explained{msg: msg, err: err}
}

// explained is an error with a better message than the one it wraps.
type explained struct {
	msg string
	err error
}

func (e *explained) Error() string { return e.msg }
func (e *explained) Unwrap() error { return e.err }

// chunkedAnnotation names the zstd:chunked annotation the layer carries.
func chunkedAnnotation(ann map[string]string) string {
	if _, ok := ann[chunked.AnnotationTOCDigest]; ok {
		return chunked.AnnotationTOCDigest
	}
	return chunked.AnnotationOldTOCDigest
}
