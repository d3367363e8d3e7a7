package snapshotter

import (
	"context"
	"maps"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
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
