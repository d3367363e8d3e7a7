package store_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// versionTar is a layer of n files: files below shared are the same in every seed, the rest
// differ, and every fifth file is large enough to be written sparse or spilled.
func versionTar(t *testing.T, seed int64, n, shared int) []byte {
	var entries []tartest.Entry
	for i := range n {
		src := seed
		if i < shared {
			src = 0
		}
		rng := rand.New(rand.NewSource(src*1000 + int64(i)))
		size := 100 + rng.Intn(4000)
		if i%5 == 0 {
			size = 1<<20 + rng.Intn(300<<10)
		}
		b := make([]byte, size)
		rng.Read(b[:size/2]) // the rest zeros: holes for the large ones
		entries = append(entries, tartest.Bytes(fmt.Sprintf("f%03d", i), b))
	}
	return tartest.Tar(t, entries...)
}

// checkTotals asserts the maintained totals are known and equal a walk, and that df reports them.
func checkTotals(t *testing.T, s *store.Store, when string) {
	t.Helper()
	got, err := store.ReadTotals(s)
	if err != nil {
		t.Fatalf("%s: totals: %v", when, err)
	}
	want, err := store.WalkTotals(s)
	if err != nil {
		t.Fatal(err)
	}
	if got != want {
		t.Fatalf("%s: totals %+v, a walk finds %+v", when, got, want)
	}
	u, err := s.Usage(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if int64(u.Objects) != want.Objects || u.ObjectBytes != want.Bytes || u.ObjectAllocated != want.Allocated {
		t.Fatalf("%s: df -v says %d objects, %d bytes, %d allocated; a walk %+v", when, u.Objects, u.ObjectBytes, u.ObjectAllocated, want)
	}
	checkSummary(t, s, when, want, false)
}

// checkSummary asserts the default df's summary reports the walked totals and the image count,
// and says whether it had to walk.
func checkSummary(t *testing.T, s *store.Store, when string, want store.Totals, walked bool) {
	t.Helper()
	sum, err := s.Summary(context.Background())
	if err != nil {
		t.Fatalf("%s: summary: %v", when, err)
	}
	ids, err := s.Images(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	got := store.Totals{Objects: sum.Objects, Bytes: sum.ObjectBytes, Allocated: sum.ObjectAllocated}
	if got != want || sum.Images != len(ids) || sum.Walked != walked {
		t.Fatalf("%s: summary %+v; a walk finds %+v and %d images, walked should be %v", when, sum, want, len(ids), walked)
	}
}

// TestTotalsFollowImportsRmiGC: after imports that share objects, rmi and gc, the totals df
// reads without walking equal a walk of objects/.
func TestTotalsFollowImportsRmiGC(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	checkTotals(t, s, "new store")
	for v := range int64(3) {
		teststore.Named(t, s, fmt.Sprint("v", v), versionTar(t, v+1, 30, 20))
		checkTotals(t, s, fmt.Sprint("import ", v))
	}
	teststore.Named(t, s, "again", versionTar(t, 2, 30, 20)) // nothing new
	checkTotals(t, s, "same content again")
	for _, name := range []string{"v0", "again"} {
		if _, err := s.RemoveImage(ctx, name, false); err != nil {
			t.Fatal(err)
		}
	}
	res, err := s.GC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.Objects == 0 {
		t.Fatal("gc freed no object: the test frees nothing")
	}
	checkTotals(t, s, "gc")
	if _, err := s.GC(ctx); err != nil {
		t.Fatal(err)
	}
	checkTotals(t, s, "gc with nothing to free")
}

// TestTotalsConcurrentImports: four imports at once, sharing most objects, count each created
// object once.
func TestTotalsConcurrentImports(t *testing.T) {
	s := teststore.Open(t)
	tars := make([][]byte, 4)
	for i := range tars {
		tars[i] = versionTar(t, int64(i+1), 40, 30)
	}
	for round := range 2 { // the second round: everything is stored already
		var wg sync.WaitGroup
		for i, b := range tars {
			wg.Add(1)
			go func() {
				defer wg.Done()
				teststore.Named(t, s, fmt.Sprintf("c%d-%d", round, i), b)
			}()
		}
		wg.Wait()
		checkTotals(t, s, fmt.Sprint("concurrent imports, round ", round))
	}
}

func usagePath(s *store.Store) string { return filepath.Join(s.Root(), store.UsageFile) }

func appendFile(t *testing.T, p string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// TestTotalsDamaged: a torn record with records after it, or a garbage record, makes the totals
// unknown (df walks, and is right), fsck reports it and repair rewrites it.
func TestTotalsDamaged(t *testing.T) {
	ctx := context.Background()
	for name, junk := range map[string][]byte{
		"torn inside": append([]byte("KUS1C"), store.OpenRecord(42)...),
		"garbage":     []byte(strings.Repeat("x", 44)),
	} {
		t.Run(name, func(t *testing.T) {
			s := teststore.Open(t)
			teststore.Named(t, s, "one", versionTar(t, 1, 10, 0))
			appendFile(t, usagePath(s), junk)
			if _, err := store.ReadTotals(s); !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("damaged totals read as %v", err)
			}
			want, _ := store.WalkTotals(s)
			u, err := s.Usage(ctx)
			if err != nil || int64(u.Objects) != want.Objects || u.ObjectBytes != want.Bytes {
				t.Fatalf("df on damaged totals: %+v, %v; want %+v", u, err, want)
			}
			checkSummary(t, s, "damaged totals", want, true)
			rep, err := s.Fsck(ctx, false)
			if err != nil || rep.Clean() {
				t.Fatalf("fsck of damaged totals: clean %v, %v", rep.Clean(), err)
			}
			if rep, err = s.Fsck(ctx, true); err != nil || rep.Repaired != 1 {
				t.Fatalf("fsck --repair: %+v, %v", rep, err)
			}
			checkTotals(t, s, "after repair")
			if rep, err = s.Fsck(ctx, false); err != nil || !rep.Clean() || rep.TotalsNote != "" {
				t.Fatalf("fsck after repair: %+v, %v", rep, err)
			}
		})
	}
}

// TestTotalsUnknown: a placement a crash left open, an append a kill cut short (a write of a
// killed process may stop at a page boundary), or no totals file, is not damage: df walks, fsck
// is clean with a note, the next placement does not append after the cut, and gc writes the
// totals again.
func TestTotalsUnknown(t *testing.T) {
	ctx := context.Background()
	for name, spoil := range map[string]func(t *testing.T, p string){
		"open placement": func(t *testing.T, p string) { appendFile(t, p, store.OpenRecord(42)) },
		"cut append":     func(t *testing.T, p string) { appendFile(t, p, store.OpenRecord(42)[:5]) },
		"missing":        func(t *testing.T, p string) { os.Remove(p) },
	} {
		t.Run(name, func(t *testing.T) {
			s := teststore.Open(t)
			teststore.Named(t, s, "one", versionTar(t, 1, 10, 0))
			spoil(t, usagePath(s))
			if _, err := store.ReadTotals(s); !errors.Is(err, errdefs.ErrNotFound) {
				t.Fatalf("unknown totals read as %v", err)
			}
			teststore.Named(t, s, "two", versionTar(t, 2, 10, 0)) // writes go on
			want, _ := store.WalkTotals(s)
			if u, err := s.Usage(ctx); err != nil || int64(u.Objects) != want.Objects {
				t.Fatalf("df on unknown totals: %+v, %v; want %+v", u, err, want)
			}
			checkSummary(t, s, "unknown totals", want, true)
			rep, err := s.Fsck(ctx, false)
			if err != nil || !rep.Clean() || rep.TotalsNote == "" {
				t.Fatalf("fsck of unknown totals: %+v, %v", rep, err)
			}
			if _, err := s.GC(ctx); err != nil {
				t.Fatal(err)
			}
			checkTotals(t, s, "after gc")
		})
	}
}

// TestTotalsSingleObjects: objects stored one at a time (Store.Ingest, as lazy fills do), the
// same content by several writers at once, count once each; an object removed behind the
// store's back makes the totals wrong, fsck says so and repair rewrites them.
func TestTotalsSingleObjects(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t, teststore.Locked())
	contents := [][]byte{[]byte("one"), make([]byte, 2<<20), []byte(strings.Repeat("three", 1000))}
	var wg sync.WaitGroup
	for range 4 {
		for _, c := range contents {
			wg.Add(1)
			go func() {
				defer wg.Done()
				w, err := s.Ingest(ctx, "", -1)
				if err != nil {
					t.Error(err)
					return
				}
				w.Write(c)
				if _, err := w.Commit(ctx); err != nil {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	checkTotals(t, s, "single objects")
	if got, _ := store.ReadTotals(s); got.Objects != 3 {
		t.Fatalf("totals %+v, want 3 objects", got)
	}
}

// TestTotalsWrongRepaired: totals that parse but disagree with the objects (one removed by hand)
// are a problem fsck reports; repair rewrites them from a walk.
func TestTotalsWrongRepaired(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "one", versionTar(t, 1, 10, 0))
	refs, err := s.LayerObjectRefs(ctx, img.Layers[0])
	if err != nil || len(refs) == 0 {
		t.Fatal(refs, err)
	}
	p, _ := s.ObjectPath(refs[0].Digest)
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	rep, err := s.Fsck(ctx, false)
	if err != nil || rep.Clean() || !strings.Contains(strings.Join(rep.Problems, "\n"), "usage totals say") {
		t.Fatalf("fsck of wrong totals: %v, %v", rep.Problems, err)
	}
	if _, err := s.FsckWith(ctx, store.FsckOptions{Repair: true}); err != nil {
		t.Logf("repair (the removed object cannot be fetched again): %v", err)
	}
	checkTotals(t, s, "after repair")
}
