package lazy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"runtime"
	"slices"
	"strings"
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

	mu     sync.Mutex
	byName map[string][]*placeholder // placeholderKey → the placeholders of that name

	writes    chan writeJob
	closed    chan struct{} // closed by Close: the writer ends, fills still in flight give up
	writerTID int
	answers   sync.WaitGroup // the accesses being answered, each with its fill's commit
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
	f := &Filler{s: s, fill: fill, timeout: timeout, log: log, g: g, byName: map[string][]*placeholder{},
		writes: make(chan writeJob), closed: make(chan struct{})}
	tid := make(chan int)
	go f.writer(tid)
	f.writerTID = <-tid
	return f, nil
}

// Watch marks the placeholder directories of a pending layer's objects: one mark for the
// files of a directory (FAN_EVENT_ON_CHILD) rather than one per placeholder, whose path
// lookups and marks were most of the time between a lazy pull's placeholders and its
// "mountable". A placeholder missing for an object the store lacks (a pull killed while it made
// them, after its record was written) is made here: without one such a file would fail to open
// until the whole layer is in. A directory's listing finds those, so a whole pull costs no
// second pass over its placeholders. A placeholder whose object the store holds already (a
// crash between storing and copying leaves that) is filled from the store at its first access,
// or by FillAll.
func (f *Filler) Watch(ctx context.Context, p *Pending, diffID digest.Digest, objs []digest.Digest) error {
	fans, byFan, err := placeholderGroups(f.s, objs)
	if err != nil {
		return err
	}
	data := p.DataDir(diffID)
	var g errgroup.Group
	g.SetLimit(watchWorkers)
	for _, fan := range fans {
		g.Go(func() error { return f.watchDir(data, fan, diffID, byFan[fan]) })
	}
	return g.Wait()
}

// watchWorkers is how many directories Watch lists and marks at once.
const watchWorkers = 4

// watchDir makes the missing placeholders of phs, all in fan-out directory fan of data,
// registers them and marks the directory.
func (f *Filler) watchDir(data, fan string, diffID digest.Digest, phs []placeholderName) error {
	dir := data + "/" + fan
	names, err := listNames(dir)
	if err != nil {
		return err
	}
	var missing []placeholderName
	for _, ph := range phs {
		if !names[ph.name] {
			missing = append(missing, ph)
		}
	}
	if len(missing) > 0 {
		// None is made for an object the store holds (stored before the pull, or meanwhile).
		stored, err := makePlaceholdersIn(f.s, dir, missing)
		if err != nil {
			return err
		}
		phs = slices.DeleteFunc(phs, func(ph placeholderName) bool { return stored[ph.obj] })
	}
	if len(phs) == 0 {
		return nil
	}
	// Known before marked: an event on one must never be taken for a stranger's.
	f.mu.Lock()
	for _, ph := range phs {
		key := fan + "/" + ph.name // placeholderKey of its path
		f.byName[key] = append(f.byName[key], &placeholder{path: dir + "/" + ph.name, diffID: diffID, obj: ph.obj, gate: newFillGate()})
	}
	f.mu.Unlock()
	return f.g.MarkChildren(dir, marked)
}

// listNames returns the names in dir (none when it does not exist).
func listNames(dir string) (map[string]bool, error) {
	d, err := os.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer d.Close()
	names, err := d.Readdirnames(-1)
	if err != nil {
		return nil, err
	}
	set := make(map[string]bool, len(names))
	for _, n := range names {
		set[n] = true
	}
	return set, nil
}

// placeholderKey is the fan-out directory and name of placeholder path p: what the kernel's
// path of an event's descriptor ends in, whichever mount it was opened through (overlay opens a
// data-only layer's files on a private clone of its mount, rooted at the layer's directory).
func placeholderKey(p string) string {
	return path.Join(path.Base(path.Dir(p)), path.Base(p))
}

// marked is what a placeholder raises until it is filled: its open, so that a file mapped
// before any read is filled (a composefs mount opens the object when its file is opened, and a
// first access by mmap raises no event of its own: the kernel's mmap hook sees the overlay file,
// not the object, and a page fault raises nothing), and any read of it.
const marked = fanotify.PreAccess | fanotify.OpenPerm

// placeholderOf returns the placeholder that file (an event's descriptor) is, or nil when it is
// none of the filler's: found by the name the kernel gives the descriptor, and confirmed by its
// inode.
func (f *Filler) placeholderOf(file *os.File) (*placeholder, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(file.Fd()), &st); err != nil {
		return nil, err
	}
	link, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", file.Fd()))
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	candidates := f.byName[placeholderKey(strings.TrimSuffix(link, " (deleted)"))]
	f.mu.Unlock()
	for _, c := range candidates { // one per pending layer holding the object
		var cst unix.Stat_t
		if unix.Stat(c.path, &cst) == nil && cst.Dev == st.Dev && cst.Ino == st.Ino {
			return c, nil
		}
	}
	if len(candidates) > 0 {
		// A placeholder's name in a marked directory, but not its inode: never let it through.
		return nil, fmt.Errorf("%s: a placeholder's name on another file", link)
	}
	return nil, nil
}

// Run answers events until ctx ends or the group is closed. Each access is answered on a
// goroutine of its own, so a slow fetch holds up only the readers of that file, and the loop
// goes on answering the writer's own opens and writes while fills run. It returns once the
// answers in flight are over (their fills give up with ctx), so that no commit holds the
// store's lock after it.
func (f *Filler) Run(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { f.g.Close() })
	defer stop()
	defer f.answers.Wait()
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
			f.answers.Go(func() { f.answer(ctx, ev) })
		}
	}
}

// answer fills the placeholder the event is about and lets the reader go, or fails its access
// with EIO once the fill failed or took longer than the timeout. An open (OpenPerm) and a read
// (PreAccess) are answered alike: the whole object is filled before either goes on.
func (f *Filler) answer(ctx context.Context, ev fanotify.Event) {
	ph, err := f.placeholderOf(ev.File)
	if err != nil {
		f.g.Deny(ev, syscall.EIO)
		return
	}
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

// fillOne fetches the object unless the store holds it (once per placeholder, concurrent
// accesses waiting for the first), copies it into the placeholder and ignore-marks it, so later
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
	ph.filled = true // later events are let through at once; the ignore mark spares them
	if err := f.g.IgnorePath(ph.path, marked); err != nil {
		f.log.Warn("lazy: a filled placeholder still raises events", "object", ph.obj, "err", err)
	}
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
	var phs []*placeholder
	for _, named := range f.byName {
		phs = append(phs, named...)
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
