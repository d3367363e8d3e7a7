package store

import (
	"context"
	"path/filepath"
)

// Summary is what the default `kura df` reports: only figures whose cost does not grow with the
// store's images and layers. The object totals come from usageFile and the image count from one
// listing of images/ (names only, no stat, no record read). Metadata bytes, logical sizes and the
// dedup ratio are not maintained yet (they need a stat of every metadata file and a read of every
// image and layer record) and stay with Usage, behind `df -v`.
type Summary struct {
	Images          int
	Objects         int64
	ObjectBytes     int64
	ObjectAllocated int64
	// Walked is set when the totals were unknown or damaged and objects/ was walked instead.
	Walked bool
}

// Summary computes the df summary under the shared lock.
func (s *Store) Summary(ctx context.Context) (Summary, error) {
	unlock, err := s.RLock(ctx)
	if err != nil {
		return Summary{}, err
	}
	defer unlock()
	var sum Summary
	t, walked, err := s.totals(ctx)
	sum.Walked = walked
	if err != nil {
		return sum, err
	}
	sum.Objects, sum.ObjectBytes, sum.ObjectAllocated = t.Objects, t.Bytes, t.Allocated
	ids, err := listDigests(filepath.Join(s.root, dirImages))
	if err != nil {
		return sum, err
	}
	sum.Images = len(ids)
	return sum, nil
}
