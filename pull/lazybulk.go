package pull

import (
	"cmp"
	"context"
	"io"
	"slices"

	"golang.org/x/sync/errgroup"

	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/store/layer"
)

// The background fetch of a lazy pull yields to on-demand fills: it fetches a layer's ranges in
// batches of at most DefaultBulkBatchBytes (a single range larger than that goes alone), at most
// DefaultBulkBatches side by side, and starts a batch only while no on-demand fill is in flight.
// A reader that opens a file the background fetch has not reached so waits, on the network, at
// most for the batches already in flight (DefaultBulkBatches × DefaultBulkBatchBytes), however
// much of the image is still queued; without the batches one import asked for all of a layer's
// ranges at once, and a reader's fill queued behind them.
const (
	DefaultBulkBatchBytes = 2 << 20
	DefaultBulkBatches    = 4
)

// bulkLimits are the batch size and count above; the zero value means the defaults.
type bulkLimits struct {
	batchBytes int64
	batches    int
}

func (b bulkLimits) withDefaults() bulkLimits {
	if b.batchBytes <= 0 {
		b.batchBytes = DefaultBulkBatchBytes
	}
	if b.batches <= 0 {
		b.batches = DefaultBulkBatches
	}
	return b
}

// bulkFetcher is the background fetch's RangeFetcher (see DefaultBulkBatchBytes): each batch
// goes through a fetcher of its own (batches run side by side; a rangeFetcher's report is not
// safe for that), and idle returns once no on-demand fill is in flight.
type bulkFetcher struct {
	inner  func() layer.RangeFetcher
	idle   func(context.Context) error
	limits bulkLimits
}

// FetchRanges fetches ranges batch by batch, in blob order, each batch after idle. fn may be
// called concurrently, as RangeFetcher allows.
func (b bulkFetcher) FetchRanges(ctx context.Context, ranges []source.Range, fn func(source.Range, io.Reader) error) error {
	l := b.limits.withDefaults()
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(l.batches)
	for _, batch := range bulkBatches(ranges, l.batchBytes) {
		g.Go(func() error {
			if err := b.idle(gctx); err != nil {
				return err
			}
			return b.inner().FetchRanges(gctx, batch, fn)
		})
	}
	return g.Wait()
}

// bulkBatches cuts ranges, sorted by offset, into consecutive batches of at most limit bytes;
// a range larger than limit is a batch of its own.
func bulkBatches(ranges []source.Range, limit int64) [][]source.Range {
	sorted := slices.Clone(ranges)
	slices.SortFunc(sorted, func(a, b source.Range) int { return cmp.Compare(a.Offset, b.Offset) })
	var out [][]source.Range
	var cur []source.Range
	var n int64
	for _, r := range sorted {
		if len(cur) > 0 && n+r.Length > limit {
			out, cur, n = append(out, cur), nil, 0
		}
		cur, n = append(cur, r), n+r.Length
	}
	if len(cur) > 0 {
		out = append(out, cur)
	}
	return out
}
