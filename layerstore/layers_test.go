package layerstore

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// registryResolver pulls from a test registry, as the command's resolver does from podman's.
type registryResolver struct {
	s      *store.Store
	client *registry.Client
	pulls  int
}

func (r *registryResolver) Resolve(ctx context.Context, ref string) (Pulled, error) {
	return r.ResolveWithEntries(ctx, ref, nil)
}

// ResolveWithEntries makes registryResolver an EntriesResolver, as the command's is.
func (r *registryResolver) ResolveWithEntries(ctx context.Context, ref string, fn pull.LayerEntriesFunc) (Pulled, error) {
	r.pulls++
	parsed, err := imageref.Parse(ref)
	if err != nil {
		return Pulled{}, err
	}
	src := registry.NewSource(r.client, parsed)
	var opts []pull.Option
	if fn != nil {
		opts = append(opts, pull.WithLayerEntries(fn))
	}
	rep, err := pull.Pull(ctx, r.s, src, opts...)
	if err != nil {
		return Pulled{}, err
	}
	img, err := r.s.Image(ctx, rep.Image)
	if err != nil {
		return Pulled{}, err
	}
	b, err := r.s.ImageManifest(ctx, rep.Image)
	if err != nil {
		return Pulled{}, err
	}
	var m ocispec.Manifest
	if err := json.Unmarshal(b, &m); err != nil {
		return Pulled{}, err
	}
	return Pulled{Image: img, Manifest: m, Source: src}, nil
}

// fixture is a two-layer zstd:chunked image in a registry and Layers serving a fresh store.
type fixture struct {
	img *imagetest.Image
	ref string
	s   *store.Store
	r   *registryResolver
	ls  *Layers
}

func newFixture(t *testing.T) *fixture { return newFixtureWith(t, Options{Diff: DiffCheckout}) }

func newFixtureWith(t *testing.T, opts Options) *fixture {
	t.Helper()
	reg := registrytest.New(t)
	base := tartest.Tar(t, tartest.Dir("a/"), tartest.File("a/x", "gone in layer 2"), tartest.File("a/keep", "kept"),
		tartest.Dir("d/"), tartest.File("d/old", "hidden by the opaque d"), tartest.File("etc/os-release", "ID=base\n"))
	top := tartest.Tar(t, tartest.Whiteout("a/x"), tartest.Dir("d/"), tartest.Opaque("d/"),
		tartest.File("d/new", "new in layer 2"), tartest.File("etc/os-release", "ID=top\n"))
	img := imagetest.Chunked(t, base, top)
	img.Push(t, reg, "test/als", "v1")
	s := teststore.Open(t)
	client := registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))))
	r := &registryResolver{s: s, client: client}
	// The state directory next to the store, on its file system (hardlinks).
	opts.State = filepath.Join(filepath.Dir(s.Root()), "state-"+filepath.Base(s.Root()))
	testkit.DetachMountsUnder(t, opts.State)
	ls, err := New(s, r, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &fixture{img: img, ref: reg.Host + "/test/als:v1", s: s, r: r, ls: ls}
}

// TestLookupServesLayer: the second layer's directory holds its files, its whiteout as a 0/0
// character device and its opaque directory marked; info carries the fields containers/storage
// reads; the TOC digest finds the same layer; one pull serves every lookup of the image.
func TestLookupServesLayer(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "whiteouts are character devices and trusted.* xattrs: needs root")
	}
	f := newFixture(t)
	ctx := context.Background()
	l, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	var info Info
	if err := json.Unmarshal(l.Info, &info); err != nil {
		t.Fatal(err)
	}
	want := Info{CompressedDigest: f.img.Descs[1].Digest, CompressedSize: f.img.Descs[1].Size,
		UncompressedDigest: f.img.DiffIDs[1], UncompressedSize: info.UncompressedSize, CompressionType: 4}
	if info != want || info.UncompressedSize <= 0 {
		t.Errorf("info %+v; want %+v with the tar's size", info, want)
	}
	checkFile(t, filepath.Join(l.Diff, "d/new"), "new in layer 2")
	checkFile(t, filepath.Join(l.Diff, "etc/os-release"), "ID=top\n")
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(l.Diff, "a/x"), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFCHR || st.Rdev != 0 {
		t.Errorf("a/x: mode %o rdev %d (%v); want the whiteout, a 0/0 character device", st.Mode, st.Rdev, err)
	}
	if _, err := os.Lstat(filepath.Join(l.Diff, "a/keep")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a/keep of layer 1 is in layer 2's directory: %v", err)
	}
	buf := make([]byte, 8)
	if n, err := unix.Lgetxattr(filepath.Join(l.Diff, "d"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("d: trusted.overlay.opaque = %q, %v; want y", buf[:n], err)
	}
	byTOC, err := f.ls.Lookup(ctx, f.ref, digest.Digest(f.img.Descs[1].Annotations[chunked.AnnotationTOCDigest]))
	if err != nil || byTOC.Diff != l.Diff {
		t.Errorf("lookup by TOC digest: %v, %v; want %s", byTOC, err, l.Diff)
	}
	if _, err := f.ls.Lookup(ctx, f.ref, digest.FromString("no such layer")); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("lookup of a digest the image lacks: %v; want not found", err)
	}
	if f.r.pulls != 1 {
		t.Errorf("%d pulls for lookups of one image; want 1", f.r.pulls)
	}
}

// TestServedLayerNeedsNoRegistry: a layer served once is served again without a pull, after
// the resolution expired (every podman run resolves the diff symlink through a lookup); another
// layer of the image, not yet served, pulls again.
func TestServedLayerNeedsNoRegistry(t *testing.T) {
	f := newFixtureWith(t, Options{Diff: DiffCheckout, ResolveTTL: time.Nanosecond})
	ctx := context.Background()
	first, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	again, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[0].Digest)
	if err != nil || again != first || f.r.pulls != 1 {
		t.Errorf("second lookup: %v (same layer: %v), %d pulls; want the served layer and 1 pull", err, again == first, f.r.pulls)
	}
	if _, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[1].Digest); err != nil || f.r.pulls != 2 {
		t.Errorf("lookup of the other layer after the resolution expired: %v, %d pulls; want 2", err, f.r.pulls)
	}
}

// TestBlobIsExact: the blob is the registry's, byte for byte, fetched once.
func TestBlobIsExact(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	l, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		fh, err := f.ls.OpenBlob(ctx, l)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		b.ReadFrom(fh)
		fh.Close()
		if !bytes.Equal(b.Bytes(), f.img.Blobs[0]) {
			t.Fatalf("blob: %d bytes, digest %s; want the registry's %s", b.Len(), digest.FromBytes(b.Bytes()), f.img.Descs[0].Digest)
		}
	}
}

// TestServedLayerIsAUse: with its name gone, the image a served layer belongs to survives gc
// (the layer directory is a checkout use of it), and fsck finds the store clean.
func TestServedLayerIsAUse(t *testing.T) {
	f := newFixture(t)
	ctx := context.Background()
	l, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	dropNamesAndGC(t, f)
	if !f.s.HasLayer(l.DiffID) {
		t.Fatalf("gc removed layer %s, which the layer store serves", l.DiffID)
	}
	rep, err := f.s.Fsck(ctx, false)
	if err != nil || !rep.Clean() {
		t.Errorf("fsck: %v, %v", rep.Problems, err)
	}
}

// dropNamesAndGC removes every name of the store and collects garbage.
func dropNamesAndGC(t *testing.T, f *fixture) {
	t.Helper()
	ctx := context.Background()
	names, err := f.s.Refs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	unlock, err := f.s.RLock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for n := range names {
		if err := f.s.DeleteRef(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	unlock()
	if _, err := f.s.GC(ctx); err != nil {
		t.Fatal(err)
	}
}

func checkFile(t *testing.T, p, want string) {
	t.Helper()
	if b, err := os.ReadFile(p); err != nil || string(b) != want {
		t.Errorf("%s: %q, %v; want %q", p, b, err, want)
	}
}
