package layer

import (
	"context"
	"fmt"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/progress"
	"github.com/kura-oci/kura/store"
)

// FetchFiles stores the contents of some files of a zstd:chunked layer (validated by
// chunked.Parse) without recording the layer: the same plan, reuse, assembly and verification
// as ImportPartial, for a lazy pull that fills files on demand and records the layer later. It
// returns the compressed bytes fetched. The objects are committed only if every fetch
// succeeded; objects the store holds already are not fetched. The caller holds the store's
// shared lock.
func FetchFiles(ctx context.Context, s *store.Store, files []chunked.File, fetch RangeFetcher) (int64, error) {
	batch, n, err := FetchObjects(ctx, s, files, fetch)
	if err != nil {
		return n, err
	}
	return n, batch.Commit(ctx)
}

// FetchObjects is FetchFiles without the commit: the verified objects are left in the batch it
// returns (readable with OpenPending), which the caller commits or aborts, and until then holds
// the store's shared lock. On an error nothing is left to commit.
func FetchObjects(ctx context.Context, s *store.Store, files []chunked.File, fetch RangeFetcher) (*store.Batch, int64, error) {
	od, err := s.OpenObjectDir()
	if err != nil {
		return nil, 0, err
	}
	defer od.Close()
	batch := s.NewBatch()
	plan := MakePlan(ctx, files, storeHave{s: s, od: od, batch: batch})
	asm := &assembler{ctx: ctx, s: s, batch: batch, bar: progress.Nop.Bar("")}
	if err := asm.prepare(plan); err != nil {
		batch.Abort()
		return nil, 0, err
	}
	var n int64
	if ranges := plan.Ranges(); len(ranges) > 0 {
		for _, r := range ranges {
			n += r.Length
		}
		if err := fetch.FetchRanges(ctx, ranges, asm.receive); err != nil {
			batch.Abort()
			return nil, n, fmt.Errorf("fetching files: %w", err)
		}
	}
	return batch, n, nil
}
