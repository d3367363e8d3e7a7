package layerstore

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Objects lists the distinct objects the files of the stored layer diffID are, each with the
// bytes it takes on disk (its allocated blocks): what the layer costs in the store, before
// what it shares with other layers is taken off. The objects are the store's own list of them
// (store.LayerObjects: the layer's object list, its TOC only when the list is missing or bad).
// It takes the store's shared lock.
func (l *Layers) Objects(ctx context.Context, diffID digest.Digest) (map[digest.Digest]int64, error) {
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	objs, err := l.s.LayerObjects(ctx, diffID)
	if err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	out := make(map[digest.Digest]int64, len(objs))
	for _, d := range objs {
		p, err := l.s.ObjectPath(d)
		if err != nil {
			return nil, fmt.Errorf("layer store: layer %s: %w", diffID, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("layer store: object %s of layer %s: %w", d, diffID, err)
		}
		out[d] = st.Blocks * 512
	}
	return out, nil
}
