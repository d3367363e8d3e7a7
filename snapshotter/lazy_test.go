package snapshotter

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"sync"
	"testing"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/layerstore"
)

// TestLazySnapshotRevivedWithoutLazy: a snapshot a --lazy run recorded on a pending layer (its
// label, its pending mount gone with a reboot), and the snapshotter started again without
// --lazy: Revive looks the layer up by the remote path, which pulls it whole, and moves the
// snapshot onto the complete layer's mount (label dropped, usage charged); its files read.
func TestLazySnapshotRevivedWithoutLazy(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newRemoteFixture(t)
	f.prepareImage(t, "v1", f.v1)
	f.svc.mu.Lock()
	r := f.svc.meta.Snapshots["v1-1"]
	complete := r.Dir
	r.Labels = maps.Clone(r.Labels)
	r.Labels[LabelLazy] = "pending"
	r.Dir = filepath.Join(t.TempDir(), "pending-mount-gone")
	r.Size, r.Inodes = 0, 0 // a pending layer is not charged
	f.svc.uncharge("v1-1")
	if err := os.Remove(filepath.Join(f.svc.dir(r), chargedFile)); err != nil {
		t.Fatal(err)
	}
	if err := f.svc.meta.save(f.svc.root); err != nil {
		t.Fatal(err)
	}
	f.svc.mu.Unlock()
	f.svc.Close()
	f.open(t)
	f.svc.Revive(context.Background())
	r = f.svc.meta.Snapshots["v1-1"]
	if r.Dir != complete || r.Labels[LabelLazy] != "" || r.Labels[LabelRemote] != "true" {
		t.Fatalf("after Revive without --lazy: dir %s labels %v, want dir %s and no lazy label", r.Dir, r.Labels, complete)
	}
	if b, err := os.ReadFile(filepath.Join(r.Dir, "app")); err != nil || string(b) != "version 1 only" {
		t.Fatalf("the snapshot's layer: %q, %v", b, err)
	}
	if _, err := os.Stat(filepath.Join(f.svc.dir(r), chargedFile)); err != nil || r.Size == 0 {
		t.Fatalf("the moved snapshot's usage was not charged: size %d, %v", r.Size, err)
	}
}

// racingLazy is a Lazy whose first lookup answers a pending layer whose pull completes as the
// answer goes back: the completion (CompleteLazy, which the Lazy's fill service calls) starts
// then, and the lookup returns once it has finished or waits at the Service's gate. Later
// lookups are answered the complete layer by the remote path.
type racingLazy struct {
	svc        *Service
	remote     Remote
	diffIDs    map[digest.Digest]digest.Digest
	pendingDir string
	gate       chan struct{} // closed by the Service's beforeLazyGate
	completion chan int      // CompleteLazy's result

	mu       sync.Mutex
	complete bool
}

func (z *racingLazy) LookupLazy(ctx context.Context, ref string, dgst digest.Digest) (*layerstore.Layer, bool, error) {
	z.mu.Lock()
	done := z.complete
	z.complete = true
	z.mu.Unlock()
	if done {
		l, err := z.remote.Lookup(ctx, ref, dgst)
		return l, false, err
	}
	finished := make(chan struct{})
	go func() {
		z.completion <- z.svc.CompleteLazy(context.Background())
		close(finished)
	}()
	select {
	case <-z.gate:
	case <-finished:
	}
	return &layerstore.Layer{DiffID: z.diffIDs[dgst], Diff: z.pendingDir}, true, nil
}

// TestLazyPrepareRacingCompletion: a remote-path Prepare whose lookup answered a pending layer,
// and whose pull completed (CompleteLazy called) before the snapshot was recorded: once the
// completion is over, the snapshot is on the complete layer's mount, charged, not left on its
// pending mount with no use keeping the layer.
func TestLazyPrepareRacingCompletion(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newRemoteFixture(t)
	f.svc.Close()
	z := &racingLazy{remote: f.ls, diffIDs: map[digest.Digest]digest.Digest{}, pendingDir: filepath.Join(t.TempDir(), "pending"),
		gate: make(chan struct{}), completion: make(chan int, 1)}
	for i, d := range f.v1.Descs {
		z.diffIDs[d.Digest] = f.v1.DiffIDs[i]
	}
	if err := os.Mkdir(z.pendingDir, 0o755); err != nil {
		t.Fatal(err)
	}
	svc, err := New(Options{Root: f.root, Remote: f.ls, Ingester: f.ls, Unmounter: f.ls, Objects: f.ls, Lazy: z})
	if err != nil {
		t.Fatal(err)
	}
	f.svc, z.svc = svc, svc
	var once sync.Once
	svc.beforeLazyGate = func() { once.Do(func() { close(z.gate) }) }
	_, err = svc.Prepare(context.Background(), &snapshots.PrepareSnapshotRequest{Key: "extract-base", Labels: map[string]string{
		LabelTargetRef: "base", LabelImageRef: f.host + "/test/app:v1", LabelLayerDigest: f.v1.Descs[0].Digest.String()}})
	if status.Code(err) != codes.AlreadyExists {
		t.Fatalf("Prepare: %v, want AlreadyExists", err)
	}
	if failed := <-z.completion; failed != 0 {
		t.Fatalf("CompleteLazy failed to move %d snapshots", failed)
	}
	svc.mu.Lock()
	r := svc.meta.Snapshots["base"]
	svc.mu.Unlock()
	if r.Labels[LabelLazy] != "" || r.Dir == z.pendingDir {
		t.Fatalf("after the completion the snapshot is still on its pending layer: dir %s, labels %v", r.Dir, r.Labels)
	}
	if _, err := os.Stat(filepath.Join(svc.dir(r), chargedFile)); err != nil {
		t.Fatalf("the moved snapshot's usage was not charged: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(r.Dir, "etc/base")); err != nil || string(b) != "shared by v1 and v2" {
		t.Fatalf("the snapshot's layer: %q, %v", b, err)
	}
}
