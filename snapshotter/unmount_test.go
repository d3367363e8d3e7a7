package snapshotter

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerstore"
)

// TestRemoveUnmountsLayer: Remove takes down a commit's layer mount once no snapshot is on it
// (two commits of the same files share one mount: it stays until both are removed), and gc
// then frees the layer; a mount Remove could not take down (something mounted inside it) is
// taken down by Cleanup once it is free.
func TestRemoveUnmountsLayer(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	ctx := context.Background()
	st := teststore.Open(t)
	ls, err := layerstore.New(st, nil, layerstore.Options{State: stateDir(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // before the temporary directories go
		dirs, _ := ls.Mounts()
		for _, d := range dirs {
			unix.Unmount(filepath.Join(d, "d"), unix.MNT_DETACH)
			unix.Unmount(d, unix.MNT_DETACH)
		}
	})
	svc, err := New(Options{Root: t.TempDir(), Ingester: ls, Unmounter: ls})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	a, b := commitFiles(t, svc, "a", "same"), commitFiles(t, svc, "b", "same")
	mnt := svc.layerMount(a)
	if mnt == "" || mnt != svc.layerMount(b) || !mounted(t, mnt) {
		t.Fatalf("commits of the same files on mounts %q and %q, want one mount", mnt, svc.layerMount(b))
	}
	removeSnapshot(t, svc, "a")
	if !mounted(t, mnt) {
		t.Fatalf("Remove of a took down the mount b is on")
	}
	removeSnapshot(t, svc, "b")
	if mounted(t, mnt) {
		t.Fatalf("the layer mount is still there after both snapshots on it were removed")
	}
	if _, err := st.GC(ctx); err != nil || st.HasLayer(a.DiffID) {
		t.Fatalf("gc after Remove: layer kept %v (%v)", st.HasLayer(a.DiffID), err)
	}

	// Busy: a mount inside the layer's mount keeps Remove from taking it down; Cleanup does,
	// once it is free.
	busy := svc.layerMount(commitFiles(t, svc, "c", "other"))
	if err := unix.Mount("tmpfs", filepath.Join(busy, "d"), "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	removeSnapshot(t, svc, "c")
	if !mounted(t, busy) {
		t.Fatalf("a busy layer mount was taken down (lazily?)")
	}
	if err := unix.Unmount(filepath.Join(busy, "d"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := svc.Cleanup(ctx, &snapshots.CleanupRequest{}); err != nil {
		t.Fatal(err)
	}
	if mounted(t, busy) {
		t.Fatalf("Cleanup left the layer mount no snapshot is on")
	}
}

// commitFiles commits a snapshot name of a directory d and a file f holding content, with
// fixed times (the same content makes the same layer), into the store.
func commitFiles(t *testing.T, svc *Service, name, content string) *record {
	t.Helper()
	ctx := context.Background()
	p, err := svc.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "extract-" + name})
	if err != nil {
		t.Fatal(err)
	}
	upper := p.Mounts[0].Source
	if err := os.Mkdir(filepath.Join(upper, "d"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(upper, "f"), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"f", "d", "."} {
		if err := os.Chtimes(filepath.Join(upper, p), time.Unix(1e9, 0), time.Unix(1e9, 0)); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := svc.Commit(ctx, &snapshots.CommitSnapshotRequest{Key: "extract-" + name, Name: name}); err != nil {
		t.Fatal(err)
	}
	r := svc.meta.Snapshots[name].clone()
	if r.DiffID == "" {
		t.Fatalf("%s not committed into the store", name)
	}
	return r
}

func removeSnapshot(t *testing.T, svc *Service, key string) {
	t.Helper()
	if _, err := svc.Remove(context.Background(), &snapshots.RemoveSnapshotRequest{Key: key}); err != nil {
		t.Fatal(err)
	}
}

func mounted(t *testing.T, dir string) bool {
	t.Helper()
	_, ok, err := mount.Find(dir)
	if err != nil {
		t.Fatal(err)
	}
	return ok
}
