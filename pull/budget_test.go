package pull

import (
	"context"
	"testing"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/source"
)

// The budget admits layers while their metadata fits, leaves no room for one more, and lets a
// layer larger than the whole budget run alone rather than never.
func TestMetaBudget(t *testing.T) {
	loc := func(meta int64) chunked.Location {
		return chunked.Location{TOC: source.Range{Offset: 1 << 20, Length: 1 << 10}, TOCUncompressed: meta,
			TarSplit: source.Range{Offset: 1<<20 + 1<<10, Length: 1 << 10}, TarSplitUncompressed: meta}
	}
	ctx := context.Background()
	c := metaCost(loc(20 << 20))
	if c < 40<<20 {
		t.Fatalf("cost of 2 × 20 MiB of metadata: %d", c)
	}
	b := newMetaBudget(c * 3 / 2)
	r1, err := b.acquire(ctx, loc(20<<20))
	if err != nil {
		t.Fatal(err)
	}
	if b.sem.TryAcquire(c) {
		t.Fatal("a second layer fits beside the first in a budget for one and a half")
	}
	r1()
	if !b.sem.TryAcquire(b.size) {
		t.Fatal("the release did not give the budget back")
	}
	b.sem.Release(b.size)
	r2, err := b.acquire(ctx, loc(1<<30)) // over the whole budget: takes all of it
	if err != nil {
		t.Fatal(err)
	}
	if b.sem.TryAcquire(1) {
		t.Fatal("a layer over the whole budget left room beside it")
	}
	r2()
	var none *metaBudget
	r3, err := none.acquire(ctx, loc(1<<30))
	if err != nil {
		t.Fatal(err)
	}
	r3()
}
