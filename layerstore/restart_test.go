package layerstore

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestRestartedWithoutLazyWaitsForMount: a layer podman got from a lazy pull that is still
// pending, looked up by a server restarted without --lazy (after a reboot: no mount left). Its
// first lookup here may be a container's, not a pull's: the first readlink of diff must name
// the layer's mount, not its empty mount point with the mount still to come. The background
// mount is held for good, so an early answer is seen whatever the timing. Then the same after
// the pull completed, for a layer whose mount point an earlier server made (a reboot took the
// mount).
func TestRestartedWithoutLazyWaitsForMount(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls mount composefs and use fanotify: they need root")
	}
	ctx := context.Background()
	reg := registrytest.New(t)
	s := teststore.Open(t)
	sp := startLazyPull(t, reg, s, 0)
	var m ocispec.Manifest
	if err := json.Unmarshal(sp.p.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	ref, dgst := reg.Host+"/app:v0", m.Layers[0].Digest
	state := filepath.Join(filepath.Dir(s.Root()), "state-"+filepath.Base(s.Root()))
	testkit.DetachMountsUnder(t, state)
	client := registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))))
	held := make(chan struct{})
	t.Cleanup(func() { close(held) })
	restart := func() *Layers {
		ls, err := New(s, &registryResolver{s: s, client: client}, Options{State: state, Diff: DiffComposefs})
		if err != nil {
			t.Fatal(err)
		}
		ls.beforeBackgroundMount = func() { <-held }
		return ls
	}
	firstDiff := func(ls *Layers, when string) string {
		t.Helper()
		layer, err := ls.lookupEarly(ctx, ref, dgst)
		if err != nil {
			t.Fatal(err)
		}
		dir, err := ls.DiffTarget(ctx, layer)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok, err := mount.Find(dir); err != nil || !ok {
			t.Fatalf("%s: the first readlink of diff named %s before its mount was made (%v)", when, dir, err)
		}
		checkFiles(t, dir, sp.files)
		return dir
	}
	dir := firstDiff(restart(), "pull pending")
	sp.complete(t, s)
	if err := unix.Unmount(dir, unix.MNT_DETACH); err != nil { // the reboot
		t.Fatal(err)
	}
	dir = firstDiff(restart(), "pull complete, mount point left by a reboot")
	unix.Unmount(dir, unix.MNT_DETACH)
}

// TestDetachStalePending: a pending layer's mount left by a server that died (its Layers gone
// without ReleasePending) is detached, and its directory and a composefs image a crash left
// beside it removed, by the next server's DetachStalePending, which also finds the pending
// pull's layer mountable again there. A mount there that is not Kura's is left, and reported.
func TestDetachStalePending(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "lazy pulls mount composefs and use fanotify: they need root")
	}
	ctx := context.Background()
	reg := registrytest.New(t)
	s := teststore.Open(t)
	sp := startLazyPull(t, reg, s, 0)
	state := filepath.Join(filepath.Dir(s.Root()), "state-"+filepath.Base(s.Root()))
	testkit.DetachMountsUnder(t, state)
	dead, err := New(s, nil, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	dir, err := dead.PendingDir(ctx, sp.p, sp.diffID)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	if _, err := os.Stat(dead.mountPoint(dirMounts, sp.diffID)); err != nil {
		t.Fatalf("serving the pending layer made no mount point for the complete one (servedBefore's mark): %v", err)
	}
	crashed := filepath.Join(state, dirPending, ".cfs-123")
	if err := os.WriteFile(crashed, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(state, dirPending, "not-kuras")
	if err := os.Mkdir(foreign, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("tmpfs", foreign, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(foreign, unix.MNT_DETACH) })

	next, err := New(s, nil, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	if err := next.DetachStalePending(); err == nil || !strings.Contains(err.Error(), foreign) {
		t.Fatalf("DetachStalePending with a tmpfs under pending/: %v; want it named", err)
	}
	if _, ok, _ := mount.Find(dir); ok {
		t.Fatalf("the dead server's pending mount %s is still there", dir)
	}
	for _, p := range []string{dir, crashed} {
		if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("%s left: %v", p, err)
		}
	}
	if _, err := os.Stat(filepath.Join(foreign, ".")); err != nil {
		t.Fatalf("the foreign mount point went: %v", err)
	}
	again, err := next.PendingDir(ctx, sp.p, sp.diffID)
	if err != nil || again != dir {
		t.Fatalf("pending layer mounted again: %q, %v; want %s", again, err, dir)
	}
	checkFiles(t, again, sp.files)
}
