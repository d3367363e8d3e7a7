package store_test

import (
	"bytes"
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// pullStep is one simulated pull: it takes the shared lock on its own handle and writes an
// object under it, as a pull does from its first object to its ref.
type pullStep struct {
	unlock func()
	err    error
}

// TestGCNotStarvedByBackToBackPulls: pulls that keep arriving, each taking the shared lock
// before the one before it lets go, hold a shared lock at every instant; with flock alone gc
// never gets the exclusive lock while they keep coming. gc must get it once the pulls it found
// are done: at most the one holding the lock and the one already through the door when gc
// asked, after which new pulls wait for gc, and then go on.
func TestGCNotStarvedByBackToBackPulls(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	pullers := [2]*store.Store{teststore.Open(t, teststore.At(root)), teststore.Open(t, teststore.At(root))}
	gcs := teststore.Open(t, teststore.At(root))
	garbage := writeLocked(t, pullers[0], []byte("no image needs this"))

	var completed atomic.Int32
	// waitingFrom is how many pulls had finished when gc was first seen asking: waiting for
	// the lock, or holding a pull back.
	var waitingFrom atomic.Int32
	waitingFrom.Store(-1)
	store.SetLockWaitHook(gcs, func() { waitingFrom.CompareAndSwap(-1, completed.Load()) })
	type gcResult struct {
		acquiredAt int32
		err        error
	}
	gcDone := make(chan gcResult, 1)
	const maxPulls = 200
	var prev func()
	gcFinished := -1
	for k := 0; k < maxPulls && (gcFinished < 0 || k < gcFinished+3); k++ {
		if k == 2 {
			go func() {
				x, err := gcs.Lock(ctx)
				if err != nil {
					gcDone <- gcResult{err: err}
					return
				}
				r := gcResult{acquiredAt: completed.Load()}
				_, r.err = x.GC(ctx)
				x.Unlock()
				gcDone <- r
			}()
		}
		h := pullers[k%2]
		waiting := make(chan struct{}, 1)
		store.SetLockWaitHook(h, func() {
			select {
			case waiting <- struct{}{}:
			default:
			}
		})
		got := make(chan pullStep, 1)
		go func() { u, err := h.RLock(ctx); got <- pullStep{u, err} }()
		var step pullStep
		select {
		case step = <-got: // overlapped with the pull before: a shared lock was held throughout
		case <-waiting: // held back behind gc: let the pull before finish so that gc can run
			// gc has asked (it holds the gate), perhaps without having had to wait yet.
			waitingFrom.CompareAndSwap(-1, completed.Load())
			prev()
			completed.Add(1)
			prev = nil
			step = <-got
		}
		if step.err != nil {
			t.Fatalf("pull %d: %v", k, step.err)
		}
		writeObject(t, h, []byte(fmt.Sprintf("pull %d", k)))
		if prev != nil {
			prev()
			completed.Add(1)
		}
		prev = step.unlock
		select {
		case r := <-gcDone:
			if r.err != nil {
				t.Fatalf("gc: %v", r.err)
			}
			gcFinished = k
			if from := waitingFrom.Load(); r.acquiredAt-from > 2 {
				t.Errorf("gc waited for %d pulls to finish after it asked (at most 2 were in)", r.acquiredAt-from)
			}
		default:
		}
	}
	if prev != nil {
		prev()
	}
	if gcFinished < 0 {
		r := <-gcDone
		t.Fatalf("gc starved: it got the lock only when the pulls stopped, after %d of them (err %v)", r.acquiredAt, r.err)
	}
	if waitingFrom.Load() < 0 {
		t.Error("gc neither waited nor held a pull back: the test did not keep a shared lock held")
	}
	if pullers[1].HasObject(garbage) {
		t.Error("gc ran but left the unreferenced object")
	}
}

// writeLocked writes data as an object under its own shared lock.
func writeLocked(t *testing.T, s *store.Store, data []byte) digest.Digest {
	t.Helper()
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	return writeObject(t, s, data)
}

func writeObject(t *testing.T, s *store.Store, data []byte) digest.Digest {
	t.Helper()
	d, err := store.WriteObject(context.Background(), s, bytes.NewReader(data), "", int64(len(data)))
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// TestSharedLockWaitingAtGateJoinsHandleHolder: a goroutine that asked for a shared lock when its
// handle held none waits at the gate behind a gc; if another goroutine of that handle gets its
// shared lock meanwhile (it was through the gate before gc took it), gc now waits for that holder,
// and the waiter must notice and go on, or a holder that waits for the waiter (the layer store's
// Lookup waits for its background mount, which waits for the layer-directory mutex held by a
// DiffTarget stuck at the gate) deadlocks with gc.
func TestSharedLockWaitingAtGateJoinsHandleHolder(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	h := teststore.Open(t, teststore.At(root))
	other := teststore.Open(t, teststore.At(root))
	gcs := teststore.Open(t, teststore.At(root))
	keep, err := other.RLock(ctx) // keeps gc waiting for the flock once it holds the gate
	if err != nil {
		t.Fatal(err)
	}
	gcWaiting := make(chan struct{})
	store.SetLockWaitHook(gcs, sync.OnceFunc(func() { close(gcWaiting) }))
	gcDone := make(chan error, 1)
	yWaiting := make(chan struct{})
	store.SetLockWaitHook(h, sync.OnceFunc(func() { close(yWaiting) }))
	yGot := make(chan pullStep, 1)
	// X is through the gate; before it takes its flock, gc takes the gate and Y asks.
	store.SetGatePassedHook(h, sync.OnceFunc(func() {
		go func() {
			x, err := gcs.Lock(ctx)
			if err == nil {
				x.Unlock()
			}
			gcDone <- err
		}()
		<-gcWaiting
		go func() { u, err := h.RLock(ctx); yGot <- pullStep{u, err} }()
		<-yWaiting
	}))
	unlockX, err := h.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keep()
	// gc now waits for X alone; X's release waits for Y here, as a Lookup waits for its mount.
	wait, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	select {
	case y := <-yGot:
		if y.err != nil {
			t.Fatal(y.err)
		}
		y.unlock()
	case <-wait.Done():
		t.Fatal("deadlock: a shared lock waits at the gate behind a gc that waits for its own handle's holder")
	}
	unlockX()
	if err := <-gcDone; err != nil {
		t.Fatalf("gc: %v", err)
	}
}

// TestRemoveImageWhileHandleHoldsLock: a long-running server (the snapshotter removes its lazy
// pulls' private names) calls RemoveImage on a handle other goroutines hold shared locks
// through. The name goes and the unnamed record is left to gc, as when another process holds
// the lock: rmi's TryLock must find the lock taken, not fail the removal.
func TestRemoveImageWhileHandleHoldsLock(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "x", tarOf(t, map[string][]byte{"a": []byte("a")}))
	unlock, err := s.RLock(ctx) // another goroutine's pull, lookup or fill
	if err != nil {
		t.Fatal(err)
	}
	r, err := s.RemoveImage(ctx, "x", false)
	unlock()
	if err != nil {
		t.Fatalf("rmi while the handle holds a shared lock: %v", err)
	}
	if len(r.Untagged) != 1 || r.Deleted {
		t.Fatalf("rmi: %+v, want the name removed and the record left to gc", r)
	}
	if res, err := s.GC(ctx); err != nil || res.Images != 1 {
		t.Fatalf("gc after: %+v, %v, want the unnamed image %s removed", res, err, img.ID)
	}
}
