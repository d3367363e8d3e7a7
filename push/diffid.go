package push

import (
	"encoding/json"
	"fmt"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// WithDiffIDMismatchAllowed makes Copy accept a source layer whose tar does not hash to the
// DiffID its config lists: every layer is then recompressed (so that each tar is hashed, also
// one already in the requested format), warn is called with the source blob digest and both
// DiffIDs, and the config written lists the true DiffIDs (a new config, hence a new manifest
// digest). Refused with WithPreserveDigests, which can change nothing.
func WithDiffIDMismatchAllowed(warn func(layer, trueDiffID, configDiffID digest.Digest)) Option {
	return func(o *options) { o.allowMismatch = warn }
}

// configFor is the config to write once the layers are: the source's, unless a layer's tar
// turned out not to be its config DiffID (allowed by WithDiffIDMismatchAllowed): then one that
// lists the true DiffIDs.
func configFor(src image, rep *Report) ([]byte, error) {
	layers := make([]digest.Digest, len(src.layers))
	differ := false
	for i, ls := range src.layers {
		layers[i] = rep.Layers[i].DiffID
		differ = differ || (ls.diffID != "" && layers[i] != ls.diffID)
	}
	if !differ {
		return src.config, nil
	}
	return correctConfig(src.config, layers)
}

// correctConfig rewrites a config's rootfs.diff_ids to diffIDs, keeping every other field as
// it was (unknown ones included).
func correctConfig(config []byte, diffIDs []digest.Digest) ([]byte, error) {
	var c map[string]json.RawMessage
	if err := json.Unmarshal(config, &c); err != nil {
		return nil, fmt.Errorf("config: %v: %w", err, errdefs.ErrInvalid)
	}
	var rootfs map[string]json.RawMessage
	if err := json.Unmarshal(c["rootfs"], &rootfs); err != nil || rootfs == nil {
		return nil, fmt.Errorf("config rootfs: %v: %w", err, errdefs.ErrInvalid)
	}
	ids, err := json.Marshal(diffIDs)
	if err != nil {
		return nil, err
	}
	rootfs["diff_ids"] = ids
	if c["rootfs"], err = json.Marshal(rootfs); err != nil {
		return nil, err
	}
	return json.Marshal(c)
}
