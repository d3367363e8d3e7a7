package pull

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
	"testing"
	"time"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/lazy/lazymount"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// newLazyEnvFUSE pushes the image and pulls it lazily into a fresh store, unmounted: in FUSE
// mode the pending pull is mounted once its service serves the placeholder directories.
func newLazyEnvFUSE(t *testing.T) (*lazyEnv, *lazy.Pending) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls mount composefs and FUSE: they need root")
	}
	e := &lazyEnv{reg: registrytest.New(t), s: teststore.Open(t), files: map[string][]byte{}}
	tree := genTree(0)
	for _, f := range tree {
		switch {
		case f.content != nil:
			e.files[f.name] = f.content
		case f.typ == tar.TypeLink:
			e.files[f.name] = e.files[f.linkname]
		}
	}
	e.img = buildImage(t, tarOf(t, tree))
	e.img.push(t, e.reg, "app", "v0")
	p, err := PullLazy(context.Background(), e.s, e.source(t))
	if err != nil {
		t.Fatal(err)
	}
	return e, p
}

// mountAt mounts the pending pull at a new directory, which becomes e.target.
func (e *lazyEnv) mountAt(t *testing.T, p *lazy.Pending) {
	t.Helper()
	e.target = t.TempDir()
	plan, done, err := lazymount.MountPlan(context.Background(), e.s, p, e.target)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if err := mount.Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	target := e.target
	t.Cleanup(func() { mount.Unmount(target) })
}

func TestLazyFUSEMountReadComplete(t *testing.T) {
	e, p := newLazyEnvFUSE(t)
	before := e.reg.Proxy.BytesServed()
	hold, complete := make(chan struct{}), make(chan struct{})
	done := e.serve(t, context.Background(), p, WithLazyMode(LazyFUSE), WithBackgroundHeld(hold),
		WithLazyComplete(func(LazyMode) { close(complete) }))
	e.mountAt(t, p)
	e.readOnDemand(t, before)
	close(hold)
	select {
	case <-complete:
	case err := <-done:
		t.Fatalf("ServeLazy ended before completing: %v", err)
	}
	e.checkComplete(t, p)
	for name := range e.files { // every file, after completion, through the same mount
		e.readWhole(t, name, "after completion")
	}
	if err := mount.Unmount(e.target); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil { // the last mount over the FUSE server gone: it ends
		t.Fatal(err)
	}
}

// TestLazyFUSEKilledThenResumed: with the FUSE server killed, reads through the mount fail
// (ENOTCONN), never zeros; a new service resumes the pending pull over the dead mount, a new
// mount reads the right bytes, and the layer completes with its DiffID.
func TestLazyFUSEKilledThenResumed(t *testing.T) {
	e, p := newLazyEnvFUSE(t)
	ctx, kill := context.WithCancel(context.Background())
	done := e.serve(t, ctx, p, WithLazyMode(LazyFUSE), WithBackgroundHeld(make(chan struct{})))
	e.mountAt(t, p)
	e.readWhole(t, "usr/lib/small-07", "read before the kill")
	kill()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("killed service: %v", err)
	}
	for _, name := range []string{"usr/lib/blob.bin", "usr/lib/small-07"} {
		if b, err := e.readMounted(t, name); !errors.Is(err, syscall.ENOTCONN) || len(b) != 0 {
			t.Fatalf("%s with the server killed: %d bytes, %v; want ENOTCONN", name, len(b), err)
		}
	}
	checkFsck(t, e.s)
	p2, err := PullLazy(context.Background(), e.s, e.source(t)) // restart: the same pending pull
	if err != nil || p2.Dir != p.Dir {
		t.Fatalf("resume: %v, %v", p2, err)
	}
	hold, complete := make(chan struct{}), make(chan struct{})
	done = e.serve(t, context.Background(), p2, WithLazyMode(LazyFUSE), WithBackgroundHeld(hold),
		WithLazyComplete(func(LazyMode) { close(complete) }))
	e.mountAt(t, p2)
	e.readWhole(t, "usr/lib/blob.bin", "after restart, a new mount")
	close(hold)
	<-complete
	e.checkComplete(t, p)
	if err := mount.Unmount(e.target); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestLazyFUSEFetchErrorFailsRead: a registry that fails, or sends wrong bytes, fails the open
// with EIO within the fill timeout; once it is back, the next open fills.
func TestLazyFUSEFetchErrorFailsRead(t *testing.T) {
	e, p := newLazyEnvFUSE(t)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := e.serve(t, ctx, p, WithLazyMode(LazyFUSE), WithBackgroundHeld(make(chan struct{})), WithFillTimeout(10*time.Second))
	e.mountAt(t, p)
	for _, fault := range []registrytest.FaultKind{registrytest.ServerError, registrytest.CorruptBody} {
		e.reg.Proxy.SetFault(registrytest.Fault{Kind: fault})
		if _, err := e.readMounted(t, "usr/lib/big.so"); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read with fault %v: %v, want EIO", fault, err)
		}
	}
	e.reg.Proxy.SetFault(registrytest.Fault{})
	e.readWhole(t, "usr/lib/big.so", "read after the registry is back")
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped service: %v", err)
	}
	checkFsck(t, e.s)
}

// TestLazyModeAuto: on this kernel (pre-content events, root) auto picks fanotify; a mode
// name that is none of the three is refused.
func TestLazyModeAuto(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "fanotify pre-content groups need root")
	}
	o := defaultOptions()
	svc, err := newFillService(context.Background(), teststore.Open(t), nil, o)
	if err != nil {
		t.Fatal(err)
	}
	defer svc.close()
	if svc.mode() != LazyFanotify {
		t.Fatalf("auto chose %s on a kernel with pre-content events", svc.mode())
	}
	if _, err := ParseLazyMode("nfs"); err == nil {
		t.Fatal("mode nfs accepted")
	}
}

// TestLazyModeAutoFallsBackToFUSE: where the kernel refuses pre-content events (ErrUnsupported),
// auto serves with FUSE and reads through the mount get the bytes; fanotify mode fails instead;
// any other failure of the fanotify group is not a reason to fall back.
func TestLazyModeAutoFallsBackToFUSE(t *testing.T) {
	e, p := newLazyEnvFUSE(t)
	refuse := func(err error) {
		newFiller = func(*store.Store, lazy.FillFunc, time.Duration, *slog.Logger) (*lazy.Filler, error) { return nil, err }
	}
	t.Cleanup(func() { newFiller = lazy.NewFiller })
	refuse(fmt.Errorf("fanotify_init: %w", errdefs.ErrUnsupported))
	if err := ServeLazy(context.Background(), e.s, e.source(t), p, nil, WithLazyMode(LazyFanotify)); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("fanotify mode without pre-content events: %v", err)
	}
	refuse(errors.New("out of memory"))
	if err := ServeLazy(context.Background(), e.s, e.source(t), p, nil); err == nil || errors.Is(err, errdefs.ErrUnsupported) {
		t.Fatalf("auto with a fanotify group failing otherwise: %v", err)
	}
	refuse(fmt.Errorf("fanotify_init: %w", errdefs.ErrUnsupported))
	var served LazyMode
	done := e.serve(t, context.Background(), p, WithLazyComplete(func(m LazyMode) { served = m }))
	e.mountAt(t, p)
	e.readWhole(t, "usr/lib/big.so", "read through the mount in auto mode")
	if err := mount.Unmount(e.target); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || served != LazyFUSE {
		t.Fatalf("auto served in mode %q: %v", served, err)
	}
	e.checkComplete(t, p)
}
