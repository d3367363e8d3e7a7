package layerstore

import (
	"context"
	"fmt"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"
)

// Objects lists the distinct objects the files of the stored layer diffID are, each with the
// bytes it takes on disk (its allocated blocks): what the layer costs in the store, before
// what it shares with other layers is taken off. It takes the store's shared lock.
func (l *Layers) Objects(ctx context.Context, diffID digest.Digest) (map[digest.Digest]int64, error) {
	unlock, err := l.s.RLock(ctx)
	if err != nil {
		return nil, err
	}
	defer unlock()
	entries, err := l.s.LayerEntries(ctx, diffID)
	if err != nil {
		return nil, fmt.Errorf("layer store: %w", err)
	}
	out := map[digest.Digest]int64{}
	for _, e := range entries {
		if _, ok := out[e.Digest]; ok || e.Digest == "" {
			continue
		}
		p, err := l.s.ObjectPath(e.Digest)
		if err != nil {
			return nil, fmt.Errorf("layer store: layer %s: %w", diffID, err)
		}
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			return nil, fmt.Errorf("layer store: object %s of layer %s: %w", e.Digest, diffID, err)
		}
		out[e.Digest] = st.Blocks * 512
	}
	return out, nil
}
