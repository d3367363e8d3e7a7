package snapshotter

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerstore"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// unnamedResolver pulls as kura snapshotter does: the image is stored without a ref, so only
// the layer mounts' uses keep its layers.
type unnamedResolver struct {
	s      *store.Store
	client *registry.Client
}

func (r *unnamedResolver) Resolve(ctx context.Context, ref string) (layerstore.Pulled, error) {
	parsed, err := imageref.Parse(ref)
	if err != nil {
		return layerstore.Pulled{}, err
	}
	rep, err := pull.Pull(ctx, r.s, registry.NewSource(r.client, parsed), pull.WithoutRef())
	if err != nil {
		return layerstore.Pulled{}, err
	}
	img, err := r.s.Image(ctx, rep.Image)
	if err != nil {
		return layerstore.Pulled{}, err
	}
	b, err := r.s.ImageManifest(ctx, rep.Image)
	if err != nil {
		return layerstore.Pulled{}, err
	}
	var m ocispec.Manifest
	err = json.Unmarshal(b, &m)
	return layerstore.Pulled{Image: img, Manifest: m}, err
}

// remoteFixture is a store, a registry holding v1 (base, top1) and v2 (base, top2), and a
// snapshotter whose remote path serves them.
type remoteFixture struct {
	st     *store.Store
	ls     *layerstore.Layers
	root   string
	svc    *Service
	v1, v2 *imagetest.Image
	host   string
}

func newRemoteFixture(t *testing.T) *remoteFixture {
	t.Helper()
	reg := registrytest.New(t)
	base := tartest.Tar(t, tartest.Dir("etc/"), tartest.File("etc/base", "shared by v1 and v2"))
	lib := tartest.File("lib", strings.Repeat("in both versions' top layers ", 1000))
	v1 := imagetest.Chunked(t, base, tartest.Tar(t, tartest.File("app", "version 1 only"), lib))
	v2 := imagetest.Chunked(t, base, tartest.Tar(t, tartest.File("app", "version 2 only"), lib))
	v1.Push(t, reg, "test/app", "v1")
	v2.Push(t, reg, "test/app", "v2")
	st := teststore.Open(t)
	client := registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))))
	state := filepath.Join(filepath.Dir(st.Root()), "state-"+filepath.Base(st.Root()))
	testkit.DetachMountsUnder(t, state)
	ls, err := layerstore.New(st, &unnamedResolver{s: st, client: client}, layerstore.Options{State: state})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the temporary directories go
		dirs, _ := ls.Mounts()
		for _, d := range dirs {
			unix.Unmount(d, unix.MNT_DETACH)
		}
	})
	f := &remoteFixture{st: st, ls: ls, root: t.TempDir(), v1: v1, v2: v2, host: reg.Host}
	f.open(t)
	t.Cleanup(func() { f.svc.Close() })
	return f
}

// stateDir is a layer store state directory for one test, whose mounts go with it.
func stateDir(t *testing.T) string {
	dir := t.TempDir()
	testkit.DetachMountsUnder(t, dir)
	return dir
}

// open starts the snapshotter on the fixture's root (again, after Close: a restart).
func (f *remoteFixture) open(t *testing.T) {
	t.Helper()
	svc, err := New(Options{Root: f.root, Remote: f.ls, Ingester: f.ls, Unmounter: f.ls, Objects: f.ls})
	if err != nil {
		t.Fatal(err)
	}
	f.svc = svc
}

// prepareImage asks for the image's layers as containerd's CRI plugin does (the labels, each
// target's parent the one below) and wants each answered AlreadyExists from the store.
func (f *remoteFixture) prepareImage(t *testing.T, tag string, img *imagetest.Image) {
	t.Helper()
	parent := ""
	for i, d := range img.Descs {
		target := tag + "-" + strconv.Itoa(i)
		if i == 0 {
			target = "base" // the same chain in both versions: containerd asks for it once
		}
		if _, ok := f.svc.meta.Snapshots[target]; !ok {
			_, err := f.svc.Prepare(context.Background(), &snapshots.PrepareSnapshotRequest{
				Key: "extract-" + target, Parent: parent, Labels: map[string]string{LabelTargetRef: target,
					LabelImageRef: f.host + "/test/app:" + tag, LabelLayerDigest: d.Digest.String()}})
			if status.Code(err) != codes.AlreadyExists {
				t.Fatalf("Prepare of %s's layer %d: %v, want AlreadyExists", tag, i, err)
			}
		}
		parent = target
	}
}

// gc runs Kura's gc and says which of the image's layers the store still holds.
func (f *remoteFixture) gc(t *testing.T, img *imagetest.Image) []bool {
	t.Helper()
	if _, err := f.st.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	var held []bool
	for _, d := range img.DiffIDs {
		held = append(held, f.st.HasLayer(d))
	}
	return held
}

// TestRemoteLayersLiveWithSnapshots: the remote path's layers are kept by Kura's gc exactly as
// long as a snapshot is on them (the pull leaves the image without a name): the shared base
// stays while either version's snapshots exist, v1's own layer goes once containerd removed
// v1's snapshots, nothing is left once all are removed, fsck is clean throughout, and v1
// asked for again after gc freed it is pulled again and served.
func TestRemoteLayersLiveWithSnapshots(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newRemoteFixture(t)
	f.prepareImage(t, "v1", f.v1)
	f.prepareImage(t, "v2", f.v2)
	if held := f.gc(t, f.v1); !held[0] || !held[1] {
		t.Fatalf("gc with v1's snapshots in place: v1's layers held %v, want both", held)
	}
	removeSnapshot(t, f.svc, "v1-1")
	if held := f.gc(t, f.v1); !held[0] || held[1] {
		t.Fatalf("gc after v1's own snapshot was removed: v1's layers held %v, want the base only", held)
	}
	if b, err := os.ReadFile(filepath.Join(f.svc.meta.Snapshots["v2-1"].Dir, "app")); err != nil || string(b) != "version 2 only" {
		t.Fatalf("v2's layer after gc: %q, %v", b, err)
	}
	f.checkFsck(t)

	f.prepareImage(t, "v1", f.v1) // freed, asked for again: pulled again
	if b, err := os.ReadFile(filepath.Join(f.svc.meta.Snapshots["v1-1"].Dir, "app")); err != nil || string(b) != "version 1 only" {
		t.Fatalf("v1's layer served again after gc: %q, %v", b, err)
	}
	for _, k := range []string{"v1-1", "v2-1", "base"} {
		removeSnapshot(t, f.svc, k)
	}
	if held := append(f.gc(t, f.v1), f.gc(t, f.v2)...); held[0] || held[1] || held[3] {
		t.Fatalf("gc after every snapshot was removed: layers held %v, want none", held)
	}
	imgs, err := f.st.Images(context.Background())
	if err != nil || len(imgs) != 0 {
		t.Fatalf("images left after gc: %v (%v)", imgs, err)
	}
	f.checkFsck(t)
}

func (f *remoteFixture) checkFsck(t *testing.T) {
	t.Helper()
	rep, err := f.st.Fsck(context.Background(), false)
	if err != nil || len(rep.Problems) != 0 {
		t.Fatalf("fsck: %v %v", rep.Problems, err)
	}
}

// TestUsageChargesEachObjectOnce: the snapshots' Usage (whose sum is containerd's ImageFsInfo)
// counts each object of the store once, however many layers hold it: the sum is the bytes and
// number of the distinct objects of the layers served; an object whose snapshot is removed is
// charged to the next snapshot of a layer holding it, also across a restart.
func TestUsageChargesEachObjectOnce(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newRemoteFixture(t)
	f.prepareImage(t, "v1", f.v1)
	f.prepareImage(t, "v2", f.v2)
	f.checkUsage(t, f.v1, f.v2)
	// v1-1 was charged for lib, which v2-1 holds too: lib is now counted nowhere (containerd
	// reads a committed snapshot's Usage once), until a layer holding it is served again.
	removeSnapshot(t, f.svc, "v1-1")
	if u, _ := f.svc.Usage(context.Background(), &snapshots.UsageRequest{Key: "v2-1"}); u.GetInodes() != 1 {
		t.Fatalf("v2-1's Usage after v1-1's removal: %v, want its own app only", u)
	}
	f.prepareImage(t, "v1", f.v1)
	f.checkUsage(t, f.v1, f.v2)
	f.svc.Close()
	f.open(t)
	removeSnapshot(t, f.svc, "v2-1")
	f.prepareImage(t, "v2", f.v2)
	f.checkUsage(t, f.v1, f.v2)
}

// checkUsage wants the Usage sum over the snapshots to be the distinct objects of the images'
// layers, and the shared lib counted.
func (f *remoteFixture) checkUsage(t *testing.T, imgs ...*imagetest.Image) {
	t.Helper()
	ctx := context.Background()
	want := map[string]int64{}
	for _, img := range imgs {
		for _, d := range img.DiffIDs {
			objs, err := f.ls.Objects(ctx, d)
			if err != nil {
				t.Fatal(err)
			}
			for o, n := range objs {
				want[o.String()] = n
			}
		}
	}
	var wantSize, size, inodes int64
	for _, n := range want {
		wantSize += n
	}
	for k := range f.svc.meta.Snapshots {
		u, err := f.svc.Usage(ctx, &snapshots.UsageRequest{Key: k})
		if err != nil {
			t.Fatal(err)
		}
		size, inodes = size+u.Size, inodes+u.Inodes
	}
	if size != wantSize || inodes != int64(len(want)) || wantSize < 28000 {
		t.Fatalf("Usage sums to %d bytes, %d inodes; the distinct objects are %d bytes, %d objects", size, inodes, wantSize, len(want))
	}
}
