package lazy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestLazyStalledFillBoundsEveryReader: two readers of one placeholder whose fetch stalls (the
// registry accepted and sends nothing) each get EIO within the fill timeout of their own
// access. The second used to wait for the first fill's whole timeout and only then start its
// own, so its fill's deadline lay two timeouts after the first access (k timeouts for the k-th).
func TestLazyStalledFillBoundsEveryReader(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content groups need root")
	}
	const timeout = 3 * time.Second
	s := teststore.Open(t)
	obj, diffID := digest.FromString("object content"), digest.FromString("layer")
	p := &Pending{Dir: t.TempDir()}
	if err := p.MakePlaceholders(s, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	deadlines := make(chan time.Time, 16)
	stall := func(ctx context.Context, _, _ digest.Digest) error {
		dl, _ := ctx.Deadline()
		deadlines <- dl
		<-ctx.Done()
		return ctx.Err()
	}
	f, ctx := runFiller(t, s, Stored(stall), timeout)
	if err := f.Watch(ctx, p, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	ph, _ := p.PlaceholderPath(s, diffID, obj)
	errs := make(chan error, 2)
	read := func() { _, err := os.ReadFile(ph); errs <- err }
	go read()
	<-deadlines // the first fill is in flight: the second reader arrives while it stalls
	second := time.Now()
	go read()
	for range 2 {
		if err := <-errs; !errors.Is(err, syscall.EIO) {
			t.Fatalf("read of a stalled placeholder: %v; want EIO", err)
		}
	}
	for len(deadlines) > 0 {
		// Half a timeout of slack for the second access's event to reach the filler.
		if dl := <-deadlines; dl.After(second.Add(timeout * 3 / 2)) {
			t.Fatalf("a fill ran until %v after the second access; every reader must be answered within the %v timeout of its own access",
				dl.Sub(second).Round(time.Millisecond), timeout)
		}
	}
}

// TestLazyCopyFromCorruptObjectNeverFills: the copy into a placeholder hashes what it copies, so a
// stored object that no longer matches its name (bit rot, or a file swapped under objects/) is
// never handed to a reader as content: the read fails and the placeholder stays empty.
func TestLazyCopyFromCorruptObjectNeverFills(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content groups need root")
	}
	s := teststore.Open(t, teststore.Locked())
	content := bytes.Repeat([]byte("lazy object "), 10<<10)
	obj, diffID := digest.FromBytes(content), digest.FromString("layer")
	p := &Pending{Dir: t.TempDir()}
	if err := p.MakePlaceholders(s, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	if _, err := store.WriteObject(context.Background(), s, bytes.NewReader(content), obj, int64(len(content))); err != nil {
		t.Fatal(err)
	}
	path, _ := s.ObjectPath(obj)
	bad := bytes.Clone(content)
	bad[len(bad)/2] ^= 1
	if err := os.WriteFile(path, bad, 0o444); err != nil {
		t.Fatal(err)
	}
	f, ctx := runFiller(t, s, Stored(func(context.Context, digest.Digest, digest.Digest) error { return nil }), 0)
	if err := f.Watch(ctx, p, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	ph, _ := p.PlaceholderPath(s, diffID, obj)
	b, rerr := os.ReadFile(ph)
	if rerr == nil || len(b) != 0 {
		t.Fatalf("placeholder of a corrupt object read %d bytes (err %v); want a failed read, never wrong bytes", len(b), rerr)
	}
	if err := f.FillAll(ctx); !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Errorf("FillAll over a corrupt stored object: %v; want ErrDigestMismatch", err)
	}
	if st, err := os.Stat(ph); err != nil || st.Size() != 0 {
		t.Fatalf("placeholder after a failed copy: %v, %v; want length 0", st, err)
	}
}

// TestLazyReaderGoesBeforeCommit: the reader of a placeholder gets the fetched, verified bytes
// before the fill's objects are committed (the commit's fsyncs are not the reader's to wait
// for), and the commit follows. Store waits for the read to end: had the filler committed
// before answering, it would wait out its bound and say so.
func TestLazyReaderGoesBeforeCommit(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content groups need root")
	}
	s := teststore.Open(t, teststore.Locked())
	content := bytes.Repeat([]byte("fetched, not yet committed "), 4<<10)
	obj, diffID := digest.FromBytes(content), digest.FromString("layer")
	p := &Pending{Dir: t.TempDir()}
	if err := p.MakePlaceholders(s, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	fetchedPath := t.TempDir() + "/fetched"
	if err := os.WriteFile(fetchedPath, content, 0o444); err != nil {
		t.Fatal(err)
	}
	readDone, stored := make(chan struct{}), make(chan error, 1)
	fill := func(context.Context, digest.Digest, digest.Digest) (Fetched, error) {
		return testFetched{path: fetchedPath, store: func(ctx context.Context) error {
			select {
			case <-readDone:
			case <-time.After(10 * time.Second):
				stored <- errors.New("the fill was committed while its reader still waited")
				return nil
			}
			_, err := store.WriteObject(ctx, s, bytes.NewReader(content), obj, int64(len(content)))
			stored <- err
			return err
		}}, nil
	}
	f, ctx := runFiller(t, s, fill, 0)
	if err := f.Watch(ctx, p, diffID, []digest.Digest{obj}); err != nil {
		t.Fatal(err)
	}
	ph, _ := p.PlaceholderPath(s, diffID, obj)
	b, err := os.ReadFile(ph)
	close(readDone)
	if err != nil || !bytes.Equal(b, content) {
		t.Fatalf("read of the placeholder: %d bytes, %v; want the object's %d bytes", len(b), err, len(content))
	}
	if err := <-stored; err != nil {
		t.Fatal(err)
	}
	if !s.HasObject(obj) {
		t.Fatal("the fill's object is not stored after its commit")
	}
}

// testFetched is a fill's object in a file outside the store, committed by store.
type testFetched struct {
	path  string
	store func(context.Context) error
}

func (f testFetched) Open(digest.Digest) (*os.File, error) { return os.Open(f.path) }
func (f testFetched) Store(ctx context.Context) error      { return f.store(ctx) }

// runFiller starts a Filler answering events until the test ends, and returns it with the
// context its Run serves.
func runFiller(t *testing.T, s *store.Store, fill FillFunc, timeout time.Duration) (*Filler, context.Context) {
	t.Helper()
	f, err := NewFiller(s, fill, timeout, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- f.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-ran; f.Close() })
	return f, ctx
}

// Stored adapts a function that stores the object itself (fetches, verifies and commits) to a
// FillFunc: its Fetched opens nothing and has nothing left to store.
func Stored(fn func(ctx context.Context, diffID, obj digest.Digest) error) FillFunc {
	return func(ctx context.Context, diffID, obj digest.Digest) (Fetched, error) {
		if err := fn(ctx, diffID, obj); err != nil {
			return nil, err
		}
		return storedFill{}, nil
	}
}

type storedFill struct{}

func (storedFill) Open(obj digest.Digest) (*os.File, error) {
	return nil, fmt.Errorf("object %s: %w", obj, errdefs.ErrNotFound)
}
func (storedFill) Store(context.Context) error { return nil }

// TestWatchMarksDirectories: Watch marks each placeholder directory, not each placeholder. A
// file of such a directory that is no placeholder goes through untouched (no fill asked); an
// object in two pending layers has a placeholder in each, and each is filled (the event's
// name is the same, its inode tells them apart); once filled, a placeholder is read again
// without a fill.
func TestWatchMarksDirectories(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content groups need root")
	}
	s := teststore.Open(t, teststore.Locked())
	content := bytes.Repeat([]byte("in two layers "), 1<<10)
	obj := digest.FromBytes(content)
	layers := []digest.Digest{digest.FromString("layer one"), digest.FromString("layer two")}
	p := &Pending{Dir: t.TempDir()}
	var fills atomic.Int32
	fill := Stored(func(ctx context.Context, _, d digest.Digest) error {
		fills.Add(1)
		if s.HasObject(d) {
			return nil
		}
		_, err := store.WriteObject(ctx, s, bytes.NewReader(content), d, int64(len(content)))
		return err
	})
	f, ctx := runFiller(t, s, fill, 0)
	for _, l := range layers {
		if err := p.MakePlaceholders(s, l, []digest.Digest{obj}); err != nil {
			t.Fatal(err)
		}
		if err := f.Watch(ctx, p, l, []digest.Digest{obj}); err != nil {
			t.Fatal(err)
		}
	}
	first, _ := p.PlaceholderPath(s, layers[0], obj)
	stranger := filepath.Join(filepath.Dir(first), "not-a-placeholder")
	if err := os.WriteFile(stranger, []byte("mine"), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(stranger); err != nil || string(b) != "mine" || fills.Load() != 0 {
		t.Fatalf("a stranger in a marked directory: %q, %v, %d fills; want its bytes and no fill", b, err, fills.Load())
	}
	for _, l := range layers {
		ph, _ := p.PlaceholderPath(s, l, obj)
		for range 2 {
			if b, err := os.ReadFile(ph); err != nil || !bytes.Equal(b, content) {
				t.Fatalf("placeholder of layer %s: %d bytes, %v; want the object's %d", l, len(b), err, len(content))
			}
		}
	}
	if n := fills.Load(); n != 1 {
		t.Fatalf("%d fills; want 1 (the second layer's placeholder is copied from the stored object, reads after a fill ask for none)", n)
	}
}
