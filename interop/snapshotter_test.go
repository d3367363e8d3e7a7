package interop

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/store"
)

// ctrEnv is a private containerd 1.6 with Kura's snapshotter as its proxy plugin "kura".
type ctrEnv struct {
	sock, kuraSock, state string
	ctd, snap             *layerStoreServer
	snapArgs              []string
}

// startContainerd starts Kura's snapshotter, then a containerd whose config loads it, each
// with its own root and sockets under base; it returns once both serve.
func startContainerd(t *testing.T, base string, snapArgs ...string) *ctrEnv {
	t.Helper()
	e := &ctrEnv{sock: filepath.Join(base, "containerd.sock"), kuraSock: filepath.Join(base, "kura.sock"), state: filepath.Join(base, "snapshotter")}
	e.snapArgs = append([]string{"--log-level", "info", "--root", filepath.Join(base, "store"), "snapshotter",
		"--address", e.kuraSock, "--state", e.state}, snapArgs...)
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "snapshotter serving")
	t.Cleanup(func() { e.snap.stop(t, syscall.SIGTERM) })
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[proxy_plugins.kura]
  type = "snapshot"
  address = %q
`, filepath.Join(base, "root"), filepath.Join(base, "run"), e.sock, e.sock+".ttrpc", e.kuraSock)
	confPath := filepath.Join(base, "containerd.toml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	e.ctd = startDaemon(t, exec.Command("containerd", "--config", confPath, "--log-level", "info"), "containerd successfully booted")
	t.Cleanup(func() { e.ctd.stop(t, syscall.SIGTERM) })
	return e
}

func (e *ctrEnv) ctr(t *testing.T, args ...string) string {
	t.Helper()
	return run(t, os.Environ(), "ctr", append([]string{"--address", e.sock}, args...)...)
}

// TestSnapshotterCtr: Debian's containerd 1.6 with Kura as its snapshotter, plain path: ctr
// pulls a kura-pushed two-version image (containerd applies each layer into the active
// snapshot Kura prepares, then commits it), runs a container from each version that prints a
// file of the image, and removes the images and the snapshots (containerd's garbage collector
// through Kura's Remove); a snapshotter restarted keeps its snapshots.
func TestSnapshotterCtr(t *testing.T) {
	requireTools(t, "containerd", "ctr", "runc", "docker-registry", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "containerd and overlay mounts need root")
	}
	reg := startDebianRegistry(t)
	cat := staticCat(t)
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	c := registry.New(registry.WithTLSVerify(false))
	releases := map[int]string{}
	for v := 1; v <= 2; v++ {
		var tarBytes []byte
		tarBytes, releases[v] = runnableTar(t, v, cat)
		pushFromStore(t, pusher, c, tarBytes, fmt.Sprintf("snap:v%d", v), fmt.Sprintf("%s/interop/snap:v%d", reg.Host, v))
	}
	base, err := os.MkdirTemp("/var/tmp", "kura-interop-snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	e := startContainerd(t, base, "--no-remote")
	for v := 1; v <= 2; v++ {
		ref := fmt.Sprintf("%s/interop/snap:v%d", reg.Host, v)
		e.ctr(t, "image", "pull", "--plain-http", "--snapshotter", "kura", ref)
		out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, fmt.Sprintf("snap-v%d", v), "/bin/cat", "/etc/os-release")
		if out != releases[v] {
			t.Fatalf("container of v%d printed %q, want %q", v, out, releases[v])
		}
	}
	snaps := e.ctr(t, "snapshots", "--snapshotter", "kura", "ls")
	if n := strings.Count(snaps, "Committed"); n != 2 {
		t.Fatalf("kura holds %d committed snapshots, want 2 (one per single-layer image):\n%s", n, snaps)
	}
	checkSnapshotterRestart(t, e, reg.Host, releases[1])
}

// checkSnapshotterRestart stops the snapshotter with SIGTERM (it must exit cleanly), starts it
// again, and runs a container from what it had committed before.
func checkSnapshotterRestart(t *testing.T, e *ctrEnv, host, release string) {
	t.Helper()
	if err := e.snap.stop(t, syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "143") {
		t.Fatalf("snapshotter on SIGTERM: %v\n%s", err, e.snap.log())
	}
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "snapshotter serving")
	ref := host + "/interop/snap:v1"
	if out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, "snap-again", "/bin/cat", "/etc/os-release"); out != release {
		t.Fatalf("after a restart the container printed %q, want %q", out, release)
	}
}
