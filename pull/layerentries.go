package pull

import (
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/layerfs"
)

// LayerEntriesFunc is given a layer's entries as a partial pull parses them from the TOC (see
// WithLayerEntries). It returns done, which the pull calls once the layer's import is over:
// recorded is true only if the layer was recorded with exactly these entries, its DiffID
// checked. Neither may modify the entries. prev is the stored layer the pull took this one for
// an update of (its tar-split prediction's), or "".
type LayerEntriesFunc func(diffID, prev digest.Digest, entries []layerfs.Entry) (done func(recorded bool))

// WithLayerEntries has a partial pull hand each layer's entries to fn as soon as it has parsed
// them, before it fetches the files the store lacks and checks the DiffID, so that work made
// from the entries alone (the layer store's per-layer composefs image) need not decode the
// layer's TOC again, and may start before the pull is over. The entries are not verified then: whatever is made from them
// must stay invisible until done(true), and be dropped on done(false) (a layer that falls back
// to a full pull is recorded with the entries of its tar, which may differ). Layers pulled
// whole or already stored are not handed over. fn is called from the pull's layer jobs,
// possibly at once for several layers.
func WithLayerEntries(fn LayerEntriesFunc) Option { return func(o *options) { o.layerEntries = fn } }

// handEntries gives fn the entries of a parsed layer; the returned done is never nil.
func (o options) handEntries(diffID, prev digest.Digest, entries []layerfs.Entry) func(recorded bool) {
	if o.layerEntries == nil {
		return func(bool) {}
	}
	if done := o.layerEntries(diffID, prev, entries); done != nil {
		return done
	}
	return func(bool) {}
}
