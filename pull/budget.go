package pull

import (
	"context"

	"golang.org/x/sync/semaphore"

	"github.com/kura-oci/kura/chunked"
)

// defaultMetaBudget is how much memory the layer jobs of one pull may hold at once for layer
// metadata: fetched and decompressed TOC and tar-split, and their decoded entries. One honest
// layer at every bound (150 MiB each, MaxTOCEntries, MaxTarSplitLines) needs more and then runs
// alone; ordinary layers need a few MiB and run side by side as --jobs allows.
const defaultMetaBudget = 512 << 20

// Decoded sizes, for the estimate: a chunked.Entry and a tar-split storage.Entry.
const (
	tocEntryBytes     = 256
	tarSplitLineBytes = 96
	minTOCEntryJSON   = 3 // "{}," : the least JSON an entry can take
)

// metaBudget is a weighted semaphore shared by the layer jobs of one pull, sized once: with
// --jobs N, N bomb layers wait for each other instead of multiplying the peak.
type metaBudget struct {
	sem  *semaphore.Weighted
	size int64
}

func newMetaBudget(size int64) *metaBudget {
	return &metaBudget{sem: semaphore.NewWeighted(size), size: size}
}

// acquire waits until the metadata loc declares fits the budget and returns its release. A
// layer larger than the whole budget waits for all others and then runs alone.
func (b *metaBudget) acquire(ctx context.Context, loc chunked.Location) (release func(), err error) {
	if b == nil {
		return func() {}, nil
	}
	w := min(metaCost(loc), b.size)
	if err := b.sem.Acquire(ctx, w); err != nil {
		return nil, err
	}
	return func() { b.sem.Release(w) }, nil
}

// metaCost estimates the memory a layer's metadata takes at most, from what the location
// declares and the entry limits (chunked.TOCEntryLimit, chunked.TarSplitLineLimit).
func metaCost(loc chunked.Location) int64 {
	entries := min(int64(chunked.TOCEntryLimit(max(loc.TOC.End(), loc.TarSplit.End()))), loc.TOCUncompressed/minTOCEntryJSON)
	lines := min(int64(chunked.TarSplitLineLimit(loc.TarSplit.Length)), loc.TarSplitUncompressed)
	return loc.TOC.Length + loc.TarSplit.Length + loc.TOCUncompressed + loc.TarSplitUncompressed +
		entries*tocEntryBytes + lines*tarSplitLineBytes
}
