package layer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/store"
)

// streamCase is a layer whose objects are stored, parsed from its zstd:chunked blob, with an
// opener of the stored objects and a FetchFunc of the blob's real tar-split that counts calls.
type streamCase struct {
	tar     []byte
	l       *chunked.Layer
	diffID  digest.Digest
	s       *store.Store
	open    opener
	fetch   FetchFunc
	fetches int
}

// versionTar is one version of a small tree: files of several sizes, one changed by version.
func versionTar(t *testing.T, version int) []byte {
	es := []tartest.Entry{tartest.Dir("etc/"), tartest.File("etc/version", fmt.Sprintf("v%d\n", version))}
	for i := range 40 {
		es = append(es, tartest.File(fmt.Sprintf("usr/lib/f%02d", i), strings.Repeat(fmt.Sprintf("line %d\n", i), 100*i)))
	}
	return tartest.Tar(t, es...)
}

func newStreamCase(t *testing.T, tb []byte) *streamCase {
	t.Helper()
	ctx := context.Background()
	img := imagetest.Chunked(t, tb)
	blob := img.Blobs[0]
	loc, err := chunked.LocateFromAnnotations(img.Descs[0].Annotations, img.Descs[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	tsBlob := blob[loc.TarSplit.Offset:loc.TarSplit.End()]
	l, err := chunked.Parse(loc, blob[loc.TOC.Offset:loc.TOC.End()], tsBlob)
	if err != nil {
		t.Fatal(err)
	}
	c := &streamCase{tar: tb, l: l, diffID: img.DiffIDs[0], s: openStore(t)}
	if _, err := Import(ctx, c.s, bytes.NewReader(tb), Options{}); err != nil {
		t.Fatal(err)
	}
	od, err := c.s.OpenObjectDir()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { od.Close() })
	c.open = func(d digest.Digest) (io.ReadCloser, error) { return od.Open(d) }
	c.fetch = func(context.Context) (*FetchedTarSplit, error) {
		c.fetches++
		return &FetchedTarSplit{Entries: l.TarSplitEntries, Zst: tsBlob, Size: loc.TarSplitUncompressed,
			Check: func() error { return chunked.CheckTarSplitEntries(l.Entries, l.TarSplitEntries) }}, nil
	}
	return c
}

// openStore opens a store in a temporary directory, read-locked for the test (teststore
// imports this package).
func openStore(t *testing.T) *store.Store {
	t.Helper()
	s, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(unlock)
	return s
}

// madeBy returns a prediction that fn makes, on its own goroutine, as begin makes one.
func (c *streamCase) madeBy(fn func() ([]storage.Entry, error)) *predicted {
	pred := &prediction{done: make(chan struct{})}
	go func() {
		defer close(pred.done)
		pred.entries, pred.err = fn()
	}()
	return &predicted{pred: pred, fetch: c.fetch}
}

// settled checks that settle, after verdict v, records the fetched tar-split (or, if predicted,
// the prediction) with the tar's size.
func (c *streamCase) settled(t *testing.T, p *predicted, v verdict, predicted bool) {
	t.Helper()
	rec, err := p.settle(context.Background(), c.l, c.diffID, v, tarSplitRecord{predicted: predicted}, c.open)
	if err != nil {
		t.Fatal(err)
	}
	fetched := strings.HasPrefix(rec.note, "tar-split fetched")
	if rec.tarSize != int64(len(c.tar)) || fetched == predicted || c.fetches != map[bool]int{true: 0, false: 1}[predicted] {
		t.Fatalf("settled: tar size %d (want %d), note %q, %d fetches", rec.tarSize, len(c.tar), rec.note, c.fetches)
	}
}

// TestPredictionVerified: a real prediction (of v1 from stored v0, its index loaded beside the
// TOC) passes: the DiffID matches, the tar's size is right, nothing is fetched.
func TestPredictionVerified(t *testing.T) {
	ctx := context.Background()
	c := newStreamCase(t, versionTar(t, 1))
	v0, err := Import(ctx, c.s, bytes.NewReader(versionTar(t, 0)), Options{})
	if err != nil {
		t.Fatal(err)
	}
	p := PredictTarSplit(ctx, c.s, v0.DiffID, c.fetch).(*predicted)
	p.begin(c.l)
	v := p.verify(ctx, c.l, c.diffID, c.open)
	if v.err != nil || v.wrongPrediction != nil || v.size != int64(len(c.tar)) {
		t.Fatalf("verdict on a right prediction: %+v; tar has %d bytes", v, len(c.tar))
	}
	c.settled(t, p, v, true)
}

// TestPredictionFails: a prediction that fails is a wrong prediction with its error, and
// settle fetches the real tar-split and checks the DiffID with it.
func TestPredictionFails(t *testing.T) {
	c := newStreamCase(t, versionTar(t, 1))
	failed := errors.New("prediction failed")
	p := c.madeBy(func() ([]storage.Entry, error) { return nil, failed })
	v := p.verify(context.Background(), c.l, c.diffID, c.open)
	if !errors.Is(v.wrongPrediction, failed) || v.err != nil {
		t.Fatalf("verdict on a prediction that failed: %+v", v)
	}
	c.settled(t, p, v, false)
}

// TestPredictionWrongAtEnd: a prediction right but for its last segment (the end of the
// archive) fails the DiffID; settle fetches the real one.
func TestPredictionWrongAtEnd(t *testing.T) {
	c := newStreamCase(t, versionTar(t, 1))
	entries := c.l.TarSplitEntries
	last := len(entries) - 1
	if entries[last].Type != storage.SegmentType {
		t.Fatalf("last tar-split entry is of type %d", entries[last].Type)
	}
	p := c.madeBy(func() ([]storage.Entry, error) {
		wrong := slices.Clone(entries)
		wrong[last].Payload = bytes.Repeat([]byte{'x'}, len(wrong[last].Payload))
		return wrong, nil
	})
	v := p.verify(context.Background(), c.l, c.diffID, c.open)
	var mismatch *DiffIDMismatchError
	if !errors.As(v.wrongPrediction, &mismatch) || mismatch.Want != c.diffID {
		t.Fatalf("verdict on a prediction wrong at its end: %+v", v)
	}
	c.settled(t, p, v, false)
}
