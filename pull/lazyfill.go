package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

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
	libs     *imageFiles // PullLazy's, or made at the first fill of a program

	mu       sync.Mutex
	inflight map[digest.Digest]*fetchedFill // object → the uncommitted fill holding it
}

// fill is the lazy.FillFunc of a lazy pull's fill service.
func (o *onDemand) fill(ctx context.Context, diffID, obj digest.Digest) (lazy.Fetched, error) {
	l := o.layers[diffID]
	f, ok := l.files[obj]
	if !ok {
		return nil, fmt.Errorf("object %s is in no file of layer %s: %w", obj, diffID, errdefs.ErrNotFound)
	}
	o.rec.add(f.Entry.Name)
	if fl := o.inFlight(obj); fl != nil {
		return inflightFill{fl: fl}, nil
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
		l.ahead.release(files[1:])
		files = files[:1]
		batch, _, err = layer.FetchObjects(ctx, o.s, files, o.fetcher(l))
	}
	if err != nil {
		unlock()
		return nil, err
	}
	fl := &fetchedFill{o: o, unlock: unlock, opened: map[digest.Digest]*os.File{}}
	fl.add(files, batch)
	// The libraries get half the fill's time left: the reader's own file, fetched, must still be
	// served within it.
	lctx := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		lctx, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		defer cancel()
	}
	o.fetchLibraries(lctx, l, f, fl)
	return fl, nil
}

func (o *onDemand) inFlight(obj digest.Digest) *fetchedFill {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.inflight[obj]
}

// track records the objects of files as held by fl until untrack.
func (o *onDemand) track(files []chunked.File, fl *fetchedFill) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range files {
		if _, ok := o.inflight[f.Entry.Digest]; !ok {
			o.inflight[f.Entry.Digest] = fl
		}
	}
}

func (o *onDemand) untrack(files []chunked.File, fl *fetchedFill) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, f := range files {
		if o.inflight[f.Entry.Digest] == fl {
			delete(o.inflight, f.Entry.Digest)
		}
	}
}

// fetchedFill is an on-demand fill's verified objects until the filler stores them, after it
// has let the reader go: its batches (the reader's file and read-ahead's, then libraries), and
// the store's shared lock. Each object is opened as soon as it is fetched, so that a reader of
// it never waits for a commit in progress (which holds its batch): an open file stays the
// object's whatever the commit renames.
type fetchedFill struct {
	o      *onDemand
	unlock func()
	parts  []fillPart

	mu     sync.Mutex
	opened map[digest.Digest]*os.File // closed (and nil) once stored
}

type fillPart struct {
	files []chunked.File
	batch *store.Batch
}

// add keeps batch, which holds the objects of files, opens them and makes fl their fill in
// flight.
func (fl *fetchedFill) add(files []chunked.File, batch *store.Batch) {
	fl.mu.Lock()
	for _, f := range files {
		d := f.Entry.Digest
		if _, ok := fl.opened[d]; !ok {
			if r, err := batch.OpenPending(d); err == nil {
				fl.opened[d] = r
			}
		}
	}
	fl.mu.Unlock()
	fl.parts = append(fl.parts, fillPart{files: files, batch: batch})
	fl.o.track(files, fl)
}

// Open opens obj anew (its own file description, through /proc/self/fd), while the fill
// holds it.
func (fl *fetchedFill) Open(obj digest.Digest) (*os.File, error) {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	r, ok := fl.opened[obj]
	if !ok {
		return nil, fmt.Errorf("object %s is not held by the fill: %w", obj, errdefs.ErrNotFound)
	}
	return os.Open(fmt.Sprintf("/proc/self/fd/%d", r.Fd()))
}

// Store commits the batches, then lets go of the objects (stored now) and the store's lock.
func (fl *fetchedFill) Store(ctx context.Context) error {
	defer fl.unlock()
	var errs []error
	for _, p := range fl.parts {
		errs = append(errs, p.batch.Commit(ctx))
	}
	for _, p := range fl.parts {
		fl.o.untrack(p.files, fl)
	}
	fl.mu.Lock()
	for _, r := range fl.opened {
		r.Close()
	}
	fl.opened = nil
	fl.mu.Unlock()
	return errors.Join(errs...)
}

// inflightFill is a fill served by another's objects, not yet committed: once they are stored,
// Open says ErrNotFound and the filler reads the stored object.
type inflightFill struct{ fl *fetchedFill }

func (f inflightFill) Open(obj digest.Digest) (*os.File, error) { return f.fl.Open(obj) }
func (inflightFill) Store(context.Context) error                { return nil }
