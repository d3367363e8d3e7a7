package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerstore"
)

// TestCommitIntoStore: a plain-path commit moves the snapshot's files into Kura's store and
// serves them from the layer's mount (the upper directory gone); a restart after the mount is
// lost (a reboot) mounts it again and removes an upper directory a killed commit left; gc keeps the layer while the snapshot exists, even
// unmounted, and frees it once the snapshot is removed.
func TestCommitIntoStore(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	ctx := context.Background()
	st := teststore.Open(t)
	ls, err := layerstore.New(st, nil, layerstore.Options{State: stateDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	open := func() *Service {
		svc, err := New(Options{Root: root, Ingester: ls})
		if err != nil {
			t.Fatal(err)
		}
		return svc
	}
	svc := open()
	p, err := svc.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "extract"})
	if err != nil {
		t.Fatal(err)
	}
	upper := p.Mounts[0].Source
	if err := os.WriteFile(filepath.Join(upper, "f"), []byte("kura"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Commit(ctx, &snapshots.CommitSnapshotRequest{Key: "extract", Name: "layer"}); err != nil {
		t.Fatal(err)
	}
	r := svc.meta.Snapshots["layer"].clone()
	if r.DiffID == "" || !st.HasLayer(r.DiffID) {
		t.Fatalf("committed snapshot not in the store: %+v", r)
	}
	if _, err := os.Stat(upper); !os.IsNotExist(err) {
		t.Errorf("upper directory still there after the commit: %v", err)
	}
	readF := func(when string) {
		t.Helper()
		if b, err := os.ReadFile(filepath.Join(r.Dir, "f")); err != nil || string(b) != "kura" {
			t.Fatalf("%s: f through %s is %q (%v), want kura", when, r.Dir, b, err)
		}
	}
	readF("after the commit")

	// A reboot: the mount is gone; the restarted server mounts the layer again.
	svc.Close()
	mnt, err := filepath.EvalSymlinks(r.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	// A commit killed after its record was saved left its upper directory: the restart drops it.
	if err := os.MkdirAll(upper, 0o755); err != nil {
		t.Fatal(err)
	}
	svc = open()
	defer svc.Close()
	svc.Revive(ctx)
	readF("after a restart")
	if _, err := os.Stat(upper); !os.IsNotExist(err) {
		t.Errorf("a commit's leftover upper directory survived the restart: %v", err)
	}

	// gc: unmounted, the layer is still kept by the snapshot; removed, it is freed.
	if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GC(ctx); err != nil || !st.HasLayer(r.DiffID) {
		t.Fatalf("gc with the snapshot present: layer kept %v (%v)", st.HasLayer(r.DiffID), err)
	}
	if _, err := svc.Remove(ctx, &snapshots.RemoveSnapshotRequest{Key: "layer"}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.GC(ctx); err != nil || st.HasLayer(r.DiffID) {
		t.Fatalf("gc after Remove: layer kept %v (%v)", st.HasLayer(r.DiffID), err)
	}
}
