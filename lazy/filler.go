package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/fanotify"
	"github.com/kura-oci/kura/store"
)

// FillFunc fetches and verifies object obj of layer diffID (with whatever it fetches along)
// through the store's verified ingest, and returns it before it is committed: see Fetched. It
// is called only when the store lacks obj.
type FillFunc func(ctx context.Context, diffID, obj digest.Digest) (Fetched, error)

// Fetched is a fill's objects, fetched and verified but not yet committed to the store. The
// fanotify filler copies the reader's object into its placeholder from here and lets the reader
// go before the commit, whose fsyncs were a third of a small fill's time; Store then commits.
// The placeholder's bytes are verified either way: a crash before the commit leaves the store
// without the object, which the next fill or the layer's import fetches again.
type Fetched interface {
	// Open opens fetched object obj (ErrNotFound when this fill did not write it: it was
	// stored meanwhile, say).
	Open(obj digest.Digest) (*os.File, error)
	// Store commits the objects and releases what the fill holds (the store's shared lock).
	// It is called exactly once.
	Store(ctx context.Context) error
}

// DefaultFillTimeout bounds one fill: a reader waits at most this long before its read fails
// with EIO (and the next access tries again).
const DefaultFillTimeout = 30 * time.Second

// Filler answers the open-permission and pre-content events of one pending pull's
// placeholders.
type Filler struct {
	s       *store.Store
	fill    FillFunc
	timeout time.Duration
	log     *slog.Logger
	g       *fanotify.Group

	mu    sync.Mutex
	byIno map[[2]uint64]*placeholder

	writes    chan writeJob
	closed    chan struct{} // closed by Close: the writer ends, fills still in flight give up
	writerTID int
}

type placeholder struct {
	path        string
	diffID, obj digest.Digest
	gate        fillGate // held while filling; guards filled
	filled      bool
}

// fillGate makes concurrent fills of one object wait for the first, each waiter only until its
// own deadline: a sync.Mutex made the k-th reader of a stalled file wait k fill timeouts (each
// holder's whole timeout, then its own).
type fillGate chan struct{}

func newFillGate() fillGate { return make(fillGate, 1) }

func (g fillGate) lock(ctx context.Context) error {
	select {
	case g <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (g fillGate) unlock() { <-g }

type writeJob struct {
	ph *placeholder
	// fetched holds the object when the fill just fetched it, verified; nil: the store does.
	fetched Fetched
	done    chan error
}

// NewFiller creates the fanotify group (ErrUnsupported without pre-content events) and the
// writer thread whose own accesses to marked placeholders it lets through.
func NewFiller(s *store.Store, fill FillFunc, timeout time.Duration, log *slog.Logger) (*Filler, error) {
	g, err := fanotify.NewPreContent()
	if err != nil {
		return nil, err
	}
	if timeout <= 0 {
		timeout = DefaultFillTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	f := &Filler{s: s, fill: fill, timeout: timeout, log: log, g: g, byIno: map[[2]uint64]*placeholder{},
		writes: make(chan writeJob), closed: make(chan struct{})}
	tid := make(chan int)
	go f.writer(tid)
	f.writerTID = <-tid
	return f, nil
}

// Watch marks the placeholders of a pending layer's objects. Objects the store holds already
// get their placeholder filled at once (a crash between storing and copying leaves that): Run
// must be running, as the copy's own events need answering. A placeholder missing for an
// object the store lacks (a pull killed while it made them, after its record was written) is
// made here: without one such a file would fail to open until the whole layer is in. The stat
// each placeholder needs anyway finds those, so a whole pull costs no second pass of creations.
// The objects are shared out between placeholderWorkers goroutines, as their creation is: the
// stats, path lookups and marks of thousands of placeholders are most of the time between a
// lazy pull's placeholders and its "mountable".
func (f *Filler) Watch(ctx context.Context, p *Pending, diffID digest.Digest, objs []digest.Digest) error {
	var g errgroup.Group
	n := (len(objs) + watchWorkers - 1) / watchWorkers
	for part := range slices.Chunk(objs, max(n, 1)) {
		g.Go(func() error {
			for _, d := range part {
				if err := f.watchOne(ctx, p, diffID, d); err != nil {
					return err
				}
			}
			return nil
		})
	}
	return g.Wait()
}

// watchWorkers is how many goroutines Watch marks placeholders on.
const watchWorkers = 4

// watchOne registers and marks object d's placeholder, and fills it at once if the store holds
// d already.
func (f *Filler) watchOne(ctx context.Context, p *Pending, diffID, d digest.Digest) error {
	path, err := p.PlaceholderPath(f.s, diffID, d)
	if err != nil {
		return err
	}
	ph := &placeholder{path: path, diffID: diffID, obj: d, gate: newFillGate()}
	st, ok, err := f.placeholderStat(p, diffID, d, path)
	if err != nil || !ok {
		return err // !ok: the object was stored before the pull, no placeholder
	}
	// Known before marked: an event on it must never be taken for a stranger's.
	f.mu.Lock()
	f.byIno[[2]uint64{st.Dev, st.Ino}] = ph
	f.mu.Unlock()
	if err := f.markPath(path, true); err != nil {
		return err
	}
	if f.s.HasObject(d) {
		return f.fillNow(ctx, ph, f.fillOne)
	}
	return nil
}

// placeholderStat stats object d's placeholder at path, making it first when it is missing
// and the store lacks d; ok is false when there is none because the store holds d.
func (f *Filler) placeholderStat(p *Pending, diffID, d digest.Digest, path string) (unix.Stat_t, bool, error) {
	var st unix.Stat_t
	err := unix.Stat(path, &st)
	if errors.Is(err, unix.ENOENT) {
		if f.s.HasObject(d) {
			return st, false, nil
		}
		if err = p.MakePlaceholders(f.s, diffID, []digest.Digest{d}); err == nil {
			err = unix.Stat(path, &st)
		}
	}
	if err != nil {
		return st, false, fmt.Errorf("placeholder of %s: %w", d, err)
	}
	return st, true, nil
}

// markPath marks a placeholder for its open as well as its reads: a composefs mount opens
// the object when its file is opened, before the opener can map it, and a first access by mmap
// raises no event of its own (the kernel's mmap hook sees the overlay file, not the object, and
// a page fault raises nothing), so the open is where a mapped file is filled.
func (f *Filler) markPath(path string, add bool) error {
	if add {
		return f.g.MarkPath(path, fanotify.PreAccess|fanotify.OpenPerm)
	}
	return f.g.UnmarkPath(path)
}

// Run answers events until ctx ends or the group is closed. Each access is answered on a
// goroutine of its own, so a slow fetch holds up only the readers of that file, and the loop
// goes on answering the writer's own opens and writes while fills run.
func (f *Filler) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { f.g.Close() })
	defer stop()
	buf := make([]byte, 64<<10)
	for {
		evs, err := f.g.Read(buf)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, os.ErrClosed) {
				return nil
			}
			return err
		}
		for _, ev := range evs {
			if ev.File == nil {
				continue
			}
			if ev.PID == f.writerTID {
				f.g.Allow(ev)
				continue
			}
			go f.answer(ctx, ev)
		}
	}
}

// answer fills the placeholder the event is about and lets the reader go, or fails its access
// with EIO once the fill failed or took longer than the timeout. An open (OpenPerm) and a read
// (PreAccess) are answered alike: the whole object is filled before either goes on.
func (f *Filler) answer(ctx context.Context, ev fanotify.Event) {
	var st unix.Stat_t
	if err := unix.Fstat(int(ev.File.Fd()), &st); err != nil {
		f.g.Deny(ev, syscall.EIO)
		return
	}
	f.mu.Lock()
	ph := f.byIno[[2]uint64{st.Dev, st.Ino}]
	f.mu.Unlock()
	if ph == nil { // not a placeholder of ours: nothing to fill
		f.g.Allow(ev)
		return
	}
	fetched, err := f.fillOne(ctx, ph)
	if err != nil {
		f.log.Warn("lazy: fill failed; the read fails with EIO", "object", ph.obj, "err", err)
		f.g.Deny(ev, syscall.EIO)
	} else {
		f.g.Allow(ev)
	}
	if serr := commitFill(ctx, fetched); serr != nil {
		f.log.Warn("lazy: a fill's objects were not stored; they will be fetched again", "object", ph.obj, "err", serr)
	}
}

// commitFill commits a fill's objects, if it fetched any (fetched is nil when it did not).
func commitFill(ctx context.Context, fetched Fetched) error {
	if fetched == nil {
		return nil
	}
	return fetched.Store(ctx)
}

// fillNow fills ph with fill (fillOne or fillWaiting) and commits what it fetched before
// returning: for fills no reader waits on.
func (f *Filler) fillNow(ctx context.Context, ph *placeholder, fill func(context.Context, *placeholder) (Fetched, error)) error {
	fetched, err := fill(ctx, ph)
	return errors.Join(err, commitFill(ctx, fetched))
}

// fillOne fetches the object unless the store holds it (once per placeholder, concurrent
// accesses waiting for the first), copies it into the placeholder and unmarks it, so later
// accesses go straight through. The fill timeout bounds the wait for a fill in flight too. What
// the fill fetched is returned uncommitted, even with an error: the caller lets the reader go,
// then stores it.
func (f *Filler) fillOne(ctx context.Context, ph *placeholder) (Fetched, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	if err := ph.gate.lock(ctx); err != nil {
		return nil, fmt.Errorf("waiting for the fill of %s in flight: %w", ph.obj, err)
	}
	defer ph.gate.unlock()
	return f.fillLocked(ctx, ph)
}

// fillLocked is fillOne once the placeholder's gate is held.
func (f *Filler) fillLocked(ctx context.Context, ph *placeholder) (fetched Fetched, err error) {
	if ph.filled {
		return nil, nil
	}
	start := time.Now()
	if !f.s.HasObject(ph.obj) {
		if fetched, err = f.fill(ctx, ph.diffID, ph.obj); err != nil {
			return nil, err
		}
	}
	got := time.Now()
	defer func() {
		f.log.Debug("lazy: filled", "object", ph.obj, "store_ms", got.Sub(start).Milliseconds(), "copy_ms", time.Since(got).Milliseconds())
	}()
	done := make(chan error, 1)
	select {
	case f.writes <- writeJob{ph: ph, fetched: fetched, done: done}:
	case <-ctx.Done():
		return fetched, ctx.Err()
	case <-f.closed:
		return fetched, errors.New("lazy: the filler is closed")
	}
	if err := <-done; err != nil {
		return fetched, err
	}
	if err := f.markPath(ph.path, false); err != nil {
		return fetched, err
	}
	ph.filled = true
	return fetched, nil
}

// storeObject is the one fill path of both fill services (fanotify's Filler and the FUSE
// server): the object is fetched and verified through fill unless the store holds it already.
// The caller bounds ctx and makes concurrent fills of one object wait for the first.
func storeObject(ctx context.Context, s *store.Store, fill FillFunc, diffID, obj digest.Digest) error {
	if s.HasObject(obj) {
		return nil
	}
	fetched, err := fill(ctx, diffID, obj)
	if err != nil {
		return err
	}
	if err := fetched.Store(ctx); err != nil {
		return err
	}
	if !s.HasObject(obj) {
		return fmt.Errorf("object %s: not stored after its fill", obj)
	}
	return nil
}

// writer copies objects into placeholders on one locked OS thread: its opens and writes raise
// events on the marked placeholders, which Run recognises by the thread ID and allows.
func (f *Filler) writer(tid chan<- int) {
	runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
	tid <- unix.Gettid()
	for {
		select {
		case job := <-f.writes:
			job.done <- f.copyObject(job.ph, job.fetched)
		case <-f.closed:
			return
		}
	}
}

// copyObject copies the object into its placeholder, in place (the placeholder's inode is what
// marks and live mounts hold), from the fill that just fetched and verified it, or else from the
// store. A stored object is hashed before the first byte is written, so one that no longer
// matches its name (bit rot, a file swapped under objects/) never reaches a placeholder; every
// object is hashed again as it is copied: a change in between empties the placeholder again
// before the reader is answered.
func (f *Filler) copyObject(ph *placeholder, fetched Fetched) error {
	var src *os.File
	err := errdefs.ErrNotFound
	if fetched != nil {
		src, err = fetched.Open(ph.obj)
	}
	if errors.Is(err, errdefs.ErrNotFound) {
		if src, err = f.s.Open(context.Background(), ph.obj); err == nil {
			err = checkObject(io.NewSectionReader(src, 0, 1<<62), ph.obj)
		}
	}
	if src != nil {
		defer src.Close()
	}
	if err != nil {
		return err
	}
	dst, err := os.OpenFile(ph.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	err = checkObject(io.TeeReader(io.NewSectionReader(src, 0, 1<<62), dst), ph.obj)
	if err != nil {
		err = errors.Join(err, dst.Truncate(0))
	}
	if cerr := dst.Close(); err == nil {
		err = cerr
	}
	return err
}

// checkObject reads r to its end and checks that it hashes to obj.
func checkObject(r io.Reader, obj digest.Digest) error {
	v := obj.Verifier()
	if _, err := io.Copy(v, r); err != nil {
		return err
	}
	if !v.Verified() {
		return fmt.Errorf("stored object %s does not hash to its name: %w", obj, errdefs.ErrDigestMismatch)
	}
	return nil
}

// Close ends the group (its marks go; the kernel lets pending and later accesses through) and
// the writer thread. Call it after Run returned.
func (f *Filler) Close() error {
	close(f.closed)
	return f.g.Close()
}

// FillAll fills every watched placeholder that is still empty from its stored object (a
// placeholder a mount resolved keeps being read after the pending pull is removed). Objects
// the store lacks are fetched through the FillFunc.
func (f *Filler) FillAll(ctx context.Context) error {
	f.mu.Lock()
	phs := make([]*placeholder, 0, len(f.byIno))
	for _, ph := range f.byIno {
		phs = append(phs, ph)
	}
	f.mu.Unlock()
	for _, ph := range phs {
		if err := f.fillWaiting(ctx, ph); err != nil {
			return err
		}
	}
	return nil
}

// fillWaiting is fillOne for completion: it waits for a reader's fill in flight for as long as
// ctx allows (that fill may be copying a large object past the fill timeout), and bounds only
// its own fill by the timeout.
func (f *Filler) fillWaiting(ctx context.Context, ph *placeholder) error {
	if err := ph.gate.lock(ctx); err != nil {
		return err
	}
	defer ph.gate.unlock()
	fctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	fetched, err := f.fillLocked(fctx, ph)
	return errors.Join(err, commitFill(ctx, fetched))
}
