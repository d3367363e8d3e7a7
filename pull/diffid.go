package pull

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// explainDiffID turns a DiffID mismatch into an error a user can act on: what the layer is, what
// the two digests are, and what to do. Other errors pass unchanged. The error stays an
// errdefs.ErrDigestMismatch (exit 5): the image is inconsistent and nothing is stored. partial
// says the tar was rebuilt from files the store already held too, so a damaged store could be
// the cause instead.
func explainDiffID(desc ocispec.Descriptor, err error, partial bool) error {
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
	if partial {
		msg += ". This pull rebuilt the tar from files already in the store as well: if `kura fsck`" +
			" finds damaged objects, the store is the cause (`kura fsck --repair`, then pull again)"
	}
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

// WithDiffIDMismatchAllowed stores a layer whose tar does not hash to the DiffID its config
// lists under the DiffID it does hash to, instead of refusing the image, and calls warn with
// the layer's blob digest and both DiffIDs. The image record keeps the config's DiffIDs beside
// the true ones (store.Image.ConfigDiffIDs). For images made by buggy writers (podman 4.3's
// zstd:chunked push of a `podman import` layer) whose content is right but whose config is not.
func WithDiffIDMismatchAllowed(warn func(layer, trueDiffID, configDiffID digest.Digest)) Option {
	return func(o *options) { o.allowMismatch = warn }
}

// pullMismatched handles err, a failed layer pull, when mismatches are allowed: a DiffID
// mismatch pulls the blob again in full with no DiffID to check (the true one is what its
// tar hashes to; the partial path's rebuilt tar is not trusted to be it), and warns. Other
// errors pass unchanged.
func pullMismatched(ctx context.Context, s *store.Store, src source.Source, desc ocispec.Descriptor, lr *LayerReport, bar progress.Bar, err error, o options) error {
	var m *layer.DiffIDMismatchError
	if !errors.As(err, &m) || ctx.Err() != nil {
		return err
	}
	configDiffID := lr.DiffID
	o.log.Debug("layer: DiffID mismatch allowed; pulling in full", "layer", desc.Digest, "configDiffID", configDiffID, "got", m.Got)
	*lr = LayerReport{Digest: desc.Digest, DiffID: configDiffID, BlobBytes: desc.Size, Note: "DiffID mismatch allowed; pulled in full",
		BytesRequested: lr.BytesRequested, BytesReceived: lr.BytesReceived, RangesIgnored: lr.RangesIgnored}
	if err := pullFull(ctx, s, src, desc, "", lr, bar, nil); err != nil {
		return err
	}
	if lr.DiffID == configDiffID { // the full tar is right: only the partial path disagreed
		return nil
	}
	o.allowMismatch(desc.Digest, lr.DiffID, configDiffID)
	return nil
}

// trueDiffIDs records, when a layer was stored under a DiffID its config does not list, the
// DiffIDs the store holds the image's layers under (a layer listed twice takes its first
// occurrence's), and sets them in the report.
func trueDiffIDs(configDiffIDs []digest.Digest, rep *Report) []store.ImageOption {
	byConfig := map[digest.Digest]digest.Digest{}
	for i, l := range rep.Layers {
		if l.DiffID != configDiffIDs[i] && l.Mode != ModePresent {
			byConfig[configDiffIDs[i]] = l.DiffID
		}
	}
	if len(byConfig) == 0 {
		return nil
	}
	layers := slices.Clone(configDiffIDs)
	for i, d := range layers {
		if t, ok := byConfig[d]; ok {
			layers[i], rep.Layers[i].DiffID = t, t
		}
	}
	return []store.ImageOption{store.WithTrueDiffIDs(layers)}
}
