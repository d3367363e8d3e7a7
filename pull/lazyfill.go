package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// onDemand is a lazy pull's fill path: it fetches a reader's file, with the files read-ahead
// picks, and hands the verified objects to the fill service uncommitted (lazy.Fetched), so
// that the reader goes on before the commit's fsyncs. Until its commit, a fill's batch is
// in flight: a fill of an object it holds (the next file a program opens, fetched ahead) is
// served from that batch instead of fetched again.
type onDemand struct {
	s       *store.Store
	layers  map[digest.Digest]*lazyLayer
	fetcher sourceFetch
	act     *fillActivity
	rec     *profileRecorder

	ordered  []*lazyLayer // the pending layers, lowest first
	log      *slog.Logger
	libsOnce sync.Once
	libs     *imageFiles // made at the first fill of a program

	mu       sync.Mutex
	inflight map[digest.Digest]*store.Batch // object → the uncommitted batch holding it
}

// fill is the lazy.FillFunc of a lazy pull's fill service.
func (o *onDemand) fill(ctx context.Context, diffID, obj digest.Digest) (lazy.Fetched, error) {
	l := o.layers[diffID]
	f, ok := l.files[obj]
	if !ok {
		return nil, fmt.Errorf("object %s is in no file of layer %s: %w", obj, diffID, errdefs.ErrNotFound)
	}
	o.rec.add(f.Entry.Name)
	if b := o.inFlight(obj); b != nil {
		return inflightFill{batch: b}, nil
	}
	o.act.begin()
	defer o.act.end()
	unlock, err := o.s.RLock(ctx) // held until the fill is committed (fetchedFill.Store)
	if err != nil {
		return nil, err
	}
	files := append([]chunked.File{f}, l.ahead.pick(f, o.s.HasObject)...)
	batch, _, err := layer.FetchObjects(ctx, o.s, files, o.fetcher(l))
	if err != nil && len(files) > 1 && ctx.Err() == nil {
		// A file fetched ahead must not fail the reader's: try its own alone.
		files = files[:1]
		batch, _, err = layer.FetchObjects(ctx, o.s, files, o.fetcher(l))
	}
	if err != nil {
		unlock()
		return nil, err
	}
	fl := &fetchedFill{o: o, unlock: unlock}
	fl.add(files, batch)
	o.fetchLibraries(ctx, f, fl)
	return fl, nil
}

func (o *onDemand) inFlight(obj digest.Digest) *store.Batch {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inflight[obj]
}

// track records the objects of files as held by batch until untrack.
func (o *onDemand) track(files []chunked.File, batch *store.Batch) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range files {
		if _, ok := o.inflight[f.Entry.Digest]; !ok {
			o.inflight[f.Entry.Digest] = batch
		}
	}
}

func (o *onDemand) untrack(files []chunked.File, batch *store.Batch) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range files {
		if o.inflight[f.Entry.Digest] == batch {
			delete(o.inflight, f.Entry.Digest)
		}
	}
}

// fetchedFill is an on-demand fill's verified objects until the filler stores them, after it
// has let the reader go: its batches (the reader's file and read-ahead's, then libraries), and
// the store's shared lock.
type fetchedFill struct {
	o      *onDemand
	parts  []fillPart
	unlock func()
}

type fillPart struct {
	files []chunked.File
	batch *store.Batch
}

// add keeps batch, which holds the objects of files, and makes it their fill in flight.
func (f *fetchedFill) add(files []chunked.File, batch *store.Batch) {
	f.parts = append(f.parts, fillPart{files: files, batch: batch})
	f.o.track(files, batch)
}

func (f *fetchedFill) Open(obj digest.Digest) (*os.File, error) {
	for _, p := range f.parts {
		if r, err := p.batch.OpenPending(obj); err == nil {
			return r, nil
		}
	}
	return nil, fmt.Errorf("object %s is in no batch of the fill: %w", obj, errdefs.ErrNotFound)
}

func (f *fetchedFill) Store(ctx context.Context) error {
	defer f.unlock()
	var errs []error
	for _, p := range f.parts {
		errs = append(errs, p.batch.Commit(ctx))
		f.o.untrack(p.files, p.batch)
	}
	return errors.Join(errs...)
}

// inflightFill is a fill served by another's batch, not yet committed: once that commit has
// begun, Open says ErrNotFound and the filler reads the stored object.
type inflightFill struct{ batch *store.Batch }

func (f inflightFill) Open(obj digest.Digest) (*os.File, error) { return f.batch.OpenPending(obj) }
func (inflightFill) Store(context.Context) error                { return nil }
