package pull

import (
	"errors"
	"fmt"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
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
	return fmt.Errorf("%s decompresses to a tar with digest %s, but the image config lists DiffID %s:"+
		" the image is inconsistent and Kura stores nothing of it.%s"+
		" To fix it, push the image again from its original layers with a writer that records the"+
		" true DiffID (for example `kura import ROOTFS.tar NAME` then `kura push NAME HOST/REPO:TAG`,"+
		" or a current podman/skopeo); `kura copy` of this image refuses it the same way: %w",
		what, m.Got, m.Want, origin, err)
}

// chunkedAnnotation names the zstd:chunked annotation the layer carries.
func chunkedAnnotation(ann map[string]string) string {
	if _, ok := ann[chunked.AnnotationTOCDigest]; ok {
		return chunked.AnnotationTOCDigest
	}
	return chunked.AnnotationOldTOCDigest
}
