package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/lazy/lazymount"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

type lazyEnv struct {
	reg    *registrytest.Registry
	s      *store.Store
	img    *testImage
	files  map[string][]byte
	target string
}

func (e *lazyEnv) source(t testing.TB) *registry.Source {
	r, err := imageref.Parse("docker://" + e.reg.Host + "/app:v0")
	if err != nil {
		t.Fatal(err)
	}
	return registry.NewSource(registryClient(registry.WithTLSVerify(false)), r)
}

// newLazyEnv pushes a zstd:chunked image, pulls it lazily into a fresh store and mounts the
// pending pull.
func newLazyEnv(t *testing.T) (*lazyEnv, *lazy.Pending) {
	return newLazyEnvOf(t, genTree(0))
}

// newLazyEnvOf is newLazyEnv with an image of one layer of tree.
func newLazyEnvOf(t testing.TB, tree []treeFile, configEdits ...func(*ocispec.Image)) (*lazyEnv, *lazy.Pending) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls mount composefs and use fanotify: they need root")
	}
	e := &lazyEnv{reg: registrytest.New(t), s: teststore.Open(t), files: map[string][]byte{}, target: t.TempDir()}
	for _, f := range tree {
		switch {
		case f.content != nil:
			e.files[f.name] = f.content
		case f.typ == tar.TypeLink:
			e.files[f.name] = e.files[f.linkname]
		}
	}
	layerTar := tarOf(t, tree)
	e.img = buildImage(t, layerTar)
	for _, edit := range configEdits {
		e.img.editConfig(edit)
	}
	e.img.push(t, e.reg, "app", "v0")
	p, err := PullLazy(context.Background(), e.s, e.source(t))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.s.ResolveImage(context.Background(), p.Name); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("the image is recorded before its layers are complete: %v", err)
	}
	plan, done, err := lazymount.MountPlan(context.Background(), e.s, p, e.target)
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	if err := mount.Mount(context.Background(), plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.Unmount(e.target) })
	return e, p
}

// serve runs ServeLazy until it returns; it waits until the placeholders are marked.
func (e *lazyEnv) serve(t *testing.T, ctx context.Context, p *lazy.Pending, opts ...Option) chan error {
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() { done <- ServeLazy(ctx, e.s, e.source(t), p, func() { close(ready) }, opts...) }()
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("ServeLazy ended before it was ready: %v", err)
	}
	return done
}

// readMounted reads a file through the mount; what it gets must be a prefix of the content
// (short is allowed where the test says so, wrong bytes never).
func (e *lazyEnv) readMounted(t *testing.T, name string) ([]byte, error) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(e.target, name))
	if !bytes.HasPrefix(e.files[name], b) {
		t.Fatalf("%s: read %d bytes that are not the file's content", name, len(b))
	}
	return b, err
}

// readWhole reads name through the mount and fails the test unless it gets the whole content;
// when says at what point of the test.
func (e *lazyEnv) readWhole(t *testing.T, name, when string) {
	t.Helper()
	if b, err := e.readMounted(t, name); err != nil || len(b) != len(e.files[name]) {
		t.Fatalf("%s %s: %d of %d bytes, %v", name, when, len(b), len(e.files[name]), err)
	}
}

// readOnDemand reads a few files through the mount with the bulk fetch held; the registry must
// have served less than the whole blob since before.
func (e *lazyEnv) readOnDemand(t *testing.T, before int64) {
	t.Helper()
	for _, name := range []string{"usr/lib/big.so", "usr/lib/small-07", "usr/lib/hard"} {
		e.readWhole(t, name, "through the mount")
	}
	if on := e.reg.Proxy.BytesServed() - before; on >= int64(len(e.img.layers[0])) {
		t.Fatalf("the on-demand reads fetched %d bytes, the whole blob is %d", on, len(e.img.layers[0]))
	}
}

func (e *lazyEnv) checkComplete(t *testing.T, p *lazy.Pending) {
	t.Helper()
	img, err := e.s.ResolveImage(context.Background(), p.Name)
	if err != nil {
		t.Fatal(err)
	}
	if got := exportDigest(t, e.s, img.Layers[0]); got != e.img.diffIDs[0] {
		t.Fatalf("layer rebuilt to %s, want DiffID %s", got, e.img.diffIDs[0])
	}
	if _, err := os.Stat(p.Dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the pending pull is still there: %v", err)
	}
	checkFsck(t, e.s)
}

func TestLazyPullMountReadComplete(t *testing.T) {
	e, p := newLazyEnv(t)
	checkFsck(t, e.s) // placeholders are not objects
	before := e.reg.Proxy.BytesServed()
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	e.readOnDemand(t, before)
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
	for name := range e.files { // every file, read after completion, through the same mount
		e.readWhole(t, name, "after completion")
	}
}

// TestLazyFillerKilledThenResumed: with no filler, a placeholder reads short (never zeros); a
// new service resumes the same pending pull, placeholders and mount included.
func TestLazyFillerKilledThenResumed(t *testing.T) {
	// The config's program is one the pull stores before the service starts.
	e, p := newLazyEnvOf(t, genTree(0), func(c *ocispec.Image) { c.Config.Cmd = []string{"/etc/version"} })
	ctx, kill := context.WithCancel(context.Background())
	hold := make(chan struct{})
	done := e.serve(t, ctx, p, WithBackgroundHeld(hold))
	kill()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("killed service: %v", err)
	}
	if b, _ := e.readMounted(t, "usr/lib/blob.bin"); len(b) != 0 {
		t.Fatalf("a placeholder read %d bytes with no filler", len(b))
	}
	checkFsck(t, e.s)
	// gc between the services keeps what the pending pull fetched (the program).
	if _, err := e.s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	if small := digest.FromBytes(e.files["etc/version"]); !e.s.HasObject(small) {
		t.Fatalf("gc removed object %s of the pending pull", small)
	}
	p2, err := PullLazy(context.Background(), e.s, e.source(t)) // restart: the same pending pull
	if err != nil || p2.Dir != p.Dir {
		t.Fatalf("resume: %v, %v", p2, err)
	}
	hold2 := make(chan struct{})
	done = e.serve(t, context.Background(), p2, WithBackgroundHeld(hold2))
	// The dentry the short read left still resolves to the same placeholder: filled now.
	e.readWhole(t, "usr/lib/blob.bin", "after restart")
	close(hold2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// TestLazyFetchErrorFailsRead: a registry that fails, sends wrong bytes, or accepts and then
// stalls, answers the reader with EIO within the fill timeout, never a hang nor the wrong
// bytes; once it is back, the next read fills.
func TestLazyFetchErrorFailsRead(t *testing.T) {
	e, p := newLazyEnv(t)
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold), WithFillTimeout(10*time.Second))
	for _, fault := range []registrytest.FaultKind{registrytest.ServerError, registrytest.CorruptBody, registrytest.Stall} {
		e.reg.Proxy.SetFault(registrytest.Fault{Kind: fault})
		if _, err := e.readMounted(t, "usr/lib/big.so"); !errors.Is(err, syscall.EIO) {
			t.Fatalf("read with fault %v: %v, want EIO", fault, err)
		}
	}
	e.reg.Proxy.SetFault(registrytest.Fault{})
	e.readWhole(t, "usr/lib/big.so", "read after the registry is back")
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// TestLazyPlaceholdersMadeOnResume: a pull killed after its record was written but before all
// its placeholders were (MakePlaceholders runs after lazy.Create) is resumed as it is; the
// resumed service makes the missing placeholders before it marks them, so a read of such a
// file is filled on demand rather than failing until the whole layer is in.
func TestLazyPlaceholdersMadeOnResume(t *testing.T) {
	e, p := newLazyEnv(t)
	phs, err := filepath.Glob(filepath.Join(p.DataDir(p.Pending[0]), "*", "*"))
	if err != nil || len(phs) == 0 {
		t.Fatalf("placeholders %v, %v", phs, err)
	}
	for _, ph := range phs {
		if err := os.Remove(ph); err != nil {
			t.Fatal(err)
		}
	}
	p2, err := PullLazy(context.Background(), e.s, e.source(t)) // restart: the same pending pull
	if err != nil || p2.Dir != p.Dir {
		t.Fatalf("resume: %v, %v", p2, err)
	}
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p2, WithBackgroundHeld(hold))
	e.readWhole(t, "usr/lib/big.so", "read of a file whose placeholder the killed pull had not made")
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}

// With WithLazyTarSizes the pending record has each layer's tar size from its tar-split (what
// the layer store's info says before completion); without it the tar-split waits for the
// completing import and no size is recorded.
func TestLazyTarSizes(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls need root")
	}
	reg := registrytest.New(t)
	layerTar := tarOf(t, genTree(0))
	img := buildImage(t, layerTar)
	img.push(t, reg, "app", "v0")
	for _, withSizes := range []bool{false, true} {
		e := &lazyEnv{reg: reg, s: teststore.Open(t), img: img}
		var opts []Option
		want := int64(0)
		if withSizes {
			opts, want = []Option{WithLazyTarSizes()}, int64(len(layerTar))
		}
		p, err := PullLazy(context.Background(), e.s, e.source(t), opts...)
		if err != nil {
			t.Fatal(err)
		}
		if got := p.TarSizes[img.diffIDs[0]]; got != want {
			t.Fatalf("WithLazyTarSizes %v: the pending pull records a tar of %d bytes; want %d", withSizes, got, want)
		}
	}
}

// TestLazyMountRefusesVerityRequire: a pending pull's composefs image carries no fs-verity
// digests, so a mount that requires them is refused with a clear error, not mounted to fail
// every read.
func TestLazyMountRefusesVerityRequire(t *testing.T) {
	e, p := newLazyEnv(t)
	_, _, err := lazymount.MountPlan(context.Background(), e.s, p, t.TempDir(), mount.WithVerity(mount.VerityRequire))
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("mount of a pending pull with verity required: %v, want ErrInvalid", err)
	}
}

// TestLazyImageFromThePullsEntries: the composefs image a lazy pull builds from the entries it
// decoded with the TOC is byte for byte the one built from its record alone (what kura mount
// builds when the image is missing).
func TestLazyImageFromThePullsEntries(t *testing.T) {
	e, p := newLazyEnv(t)
	built, err := os.ReadFile(filepath.Join(p.Dir, store.LazyImage))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(p.Dir, store.LazyImage)); err != nil {
		t.Fatal(err)
	}
	plan, done, err := lazymount.MountPlan(context.Background(), e.s, p, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	fromRecord, err := os.ReadFile(plan.Image)
	if err != nil {
		t.Fatal(err)
	}
	if len(built) == 0 || !bytes.Equal(built, fromRecord) {
		t.Fatalf("the pull's image (%d bytes) differs from the one built from its record (%d bytes)", len(built), len(fromRecord))
	}
}
