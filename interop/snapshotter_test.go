package interop

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	containerd "github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/core/remotes/docker"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/pkg/snapshotters"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/push"
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
	return startContainerdConf(t, base, `disabled_plugins = ["io.containerd.grpc.v1.cri"]`, "", snapArgs...)
}

// startContainerdConf is startContainerd with top-level settings top and tables added to the
// configuration.
func startContainerdConf(t *testing.T, base, top, tables string, snapArgs ...string) *ctrEnv {
	t.Helper()
	e := &ctrEnv{sock: filepath.Join(base, "containerd.sock"), kuraSock: filepath.Join(base, "kura.sock"), state: filepath.Join(base, "snapshotter")}
	// --hosts-dir "": the machine's /etc/containerd/certs.d is not the test's (a later flag wins).
	e.snapArgs = append([]string{"--log-level", "info", "--root", filepath.Join(base, "store"), "snapshotter",
		"--address", e.kuraSock, "--state", e.state, "--hosts-dir", ""}, snapArgs...)
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "snapshotter serving")
	t.Cleanup(func() { e.snap.stop(t, syscall.SIGTERM) })
	conf := fmt.Sprintf(`version = 2
root = %q
state = %q
`+top+`
[grpc]
  address = %q
[ttrpc]
  address = %q
[proxy_plugins.kura]
  type = "snapshot"
  address = %q
`, filepath.Join(base, "root"), filepath.Join(base, "run"), e.sock, e.sock+".ttrpc", e.kuraSock) + tables
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
	tars := map[int][]byte{}
	for v := 1; v <= 2; v++ {
		tars[v], releases[v] = runnableTar(t, v, cat)
		pushFromStore(t, pusher, c, tars[v], fmt.Sprintf("snap:v%d", v), fmt.Sprintf("%s/interop/snap:v%d", reg.Host, v))
	}
	base, err := os.MkdirTemp("/var/tmp", "kura-interop-snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Cleanup(func() { unmountUnder(t, filepath.Join(base, "snapshotter", "layers")) }) // after containerd
	e := startContainerd(t, base, "--no-remote")
	storeRoot := filepath.Join(base, "store")
	objects := map[int]int{0: countObjects(t, storeRoot)}
	for v := 1; v <= 2; v++ {
		ref := fmt.Sprintf("%s/interop/snap:v%d", reg.Host, v)
		e.ctr(t, "image", "pull", "--plain-http", "--snapshotter", "kura", ref)
		objects[v] = countObjects(t, storeRoot)
		out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, fmt.Sprintf("snap-v%d", v), "/bin/cat", "/etc/os-release")
		if out != releases[v] {
			t.Fatalf("container of v%d printed %q, want %q", v, out, releases[v])
		}
	}
	snaps := e.ctr(t, "snapshots", "--snapshotter", "kura", "ls")
	if n := strings.Count(snaps, "Committed"); n != 2 {
		t.Fatalf("kura holds %d committed snapshots, want 2 (one per single-layer image):\n%s", n, snaps)
	}
	// The commits moved the files into Kura's store: v1 added its contents, v2 only the
	// contents v1 lacks (file-level dedup across images), and the store is consistent.
	if n := strings.Count(e.snap.log(), "commit ingested into the store"); n != 2 {
		t.Fatalf("%d commits ingested into the store, want 2:\n%s", n, e.snap.log())
	}
	v1, v2 := tarContents(t, tars[1]), tarContents(t, tars[2])
	if got := objects[1] - objects[0]; got != len(v1) {
		t.Errorf("v1's pull added %d objects to the store, want %d (its distinct file contents)", got, len(v1))
	}
	newInV2 := 0
	for d := range v2 {
		if !v1[d] {
			newInV2++
		}
	}
	t.Logf("store objects: %d after v1, %d after v2 (v2 has %d contents, %d new)", objects[1], objects[2], len(v2), newInV2)
	if got := objects[2] - objects[1]; got != newInV2 || newInV2 >= len(v2) {
		t.Errorf("v2's pull added %d objects, want %d: only the contents v1 lacks (of %d)", got, newInV2, len(v2))
	}
	kuraFsck(t, storeRoot)
	checkSnapshotterRestart(t, e, reg.Host, releases[1])

	// containerd's garbage collector removes the snapshots through Kura's Remove.
	e.ctr(t, "image", "rm", "--sync", reg.Host+"/interop/snap:v1", reg.Host+"/interop/snap:v2")
	if snaps := e.ctr(t, "snapshots", "--snapshotter", "kura", "ls"); strings.Count(snaps, "\n") != 1 {
		t.Fatalf("snapshots left after the images were removed:\n%s", snaps)
	}
	if left, err := os.ReadDir(filepath.Join(e.state, "snapshots", "snapshots")); err != nil || len(left) != 0 {
		t.Fatalf("snapshot directories left after containerd's gc: %v (%v)", left, err)
	}
}

// checkSnapshotterRestart stops the snapshotter with SIGTERM (it must exit cleanly), drops its
// layer mounts as a reboot does, starts it again, and runs a container from what it had
// committed before.
func checkSnapshotterRestart(t *testing.T, e *ctrEnv, host, release string) {
	t.Helper()
	if err := e.snap.stop(t, syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "143") {
		t.Fatalf("snapshotter on SIGTERM: %v\n%s", err, e.snap.log())
	}
	// A reboot: the committed snapshots' per-layer mounts are gone; restarted, the snapshotter
	// mounts their layers from the store again before it serves.
	unmountUnder(t, filepath.Join(e.state, "layers"))
	ref := host + "/interop/snap:v1"
	// Down: containerd cannot reach the plugin, and says so (no container, no hang).
	out, err := exec.Command("ctr", "--address", e.sock, "run", "--rm", "--snapshotter", "kura", ref, "snap-down", "/bin/cat", "/etc/os-release").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "kura.sock") {
		t.Fatalf("ctr run with the snapshotter down: %v\n%s", err, out)
	}
	t.Logf("snapshotter down: %s", out)
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "client connected") // containerd's backoff

	if out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, "snap-again", "/bin/cat", "/etc/os-release"); out != release {
		t.Fatalf("after a restart the container printed %q, want %q", out, release)
	}
}

// TestSnapshotterRemote: the remote path, as the CRI plugin drives it. containerd's Go client
// pulls with unpacking into "kura" and the handler CRI uses (snapshotters.AppendInfoHandlerWrapper:
// the cri.* labels on each layer). Kura answers the layer's Prepare by pulling it into its store,
// commits the chain ID's snapshot itself and answers AlreadyExists; containerd fetches no layer
// blob from the registry (a logging proxy in front of it says so), holds the committed snapshot
// Kura made, and a container runs on it.
func TestSnapshotterRemote(t *testing.T) {
	r := newRemoteEnv(t, false)
	e, front, ref := r.e, r.front, r.ref
	base, layer, chainID, release := r.base, r.layer, r.chainID, r.release
	criPull(t, e, ref, chainID)
	if gets := front.take(); contains(gets, layer) {
		t.Fatalf("containerd fetched the layer blob %s (GETs %v)", layer, gets)
	}
	if out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, "remote-v1", "/bin/cat", "/etc/os-release"); out != release {
		t.Fatalf("container printed %q, want %q", out, release)
	}

	// A reboot: the snapshotter stopped, its per-layer mounts gone. Restarted, it mounts the
	// layer again from the store before it serves, and the container runs.
	if err := e.snap.stop(t, syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "143") {
		t.Fatalf("snapshotter on SIGTERM: %v\n%s", err, e.snap.log())
	}
	unmountUnder(t, filepath.Join(base, "snapshotter", "layers"))
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "client connected")
	if !strings.Contains(e.snap.log(), "remote snapshot revived") {
		t.Fatalf("restarted snapshotter did not revive the remote snapshot:\n%s", e.snap.log())
	}
	if out := e.ctr(t, "run", "--rm", "--snapshotter", "kura", ref, "remote-again", "/bin/cat", "/etc/os-release"); out != release {
		t.Fatalf("container after a reboot printed %q, want %q", out, release)
	}
}

// remoteEnv is a private containerd with Kura's snapshotter (remote path on) and a one-layer
// runnable image in a registry behind a logging proxy: containerd uses the proxy, Kura the
// registry itself (a registries.conf rewrite), so the proxy's log is what containerd fetched.
type remoteEnv struct {
	e                                  *ctrEnv
	front                              *blobLog
	base, ref, layer, chainID, release string   // layer: the first; release: of the default image
	layers                             []string // the layers' digests
}

// pushLayers pushes an image of the given layer tars to ref and returns its layers' digests
// and its top layer's chain ID (what containerd names the top snapshot).
func pushLayers(t *testing.T, pusher *store.Store, layers [][]byte, ref string) ([]string, string) {
	t.Helper()
	return pushImage(t, pusher, layers, ref, "/none")
}

// pushImage is pushLayers of an image whose command is cmd.
func pushImage(t *testing.T, pusher *store.Store, layers [][]byte, ref string, cmd ...string) ([]string, string) {
	t.Helper()
	ctx := context.Background()
	if _, err := ociimport.Import(ctx, pusher, writeLayoutCmd(t, layers, cmd...), "merge", "snap:v1"); err != nil {
		t.Fatal(err)
	}
	r, _ := imageref.Parse(ref)
	dest, err := push.NewDestination(r, registry.New(registry.WithTLSVerify(false)), pusher.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := push.Push(ctx, pusher, "snap:v1", dest)
	if err != nil {
		t.Fatal(err)
	}
	img, err := pusher.ResolveImage(ctx, "snap:v1")
	if err != nil {
		t.Fatal(err)
	}
	var digests []string
	for _, l := range rep.Layers {
		digests = append(digests, l.Digest.String())
	}
	chain := img.Layers[0]
	for _, d := range img.Layers[1:] {
		chain = digest.FromString(chain.String() + " " + d.String())
	}
	return digests, chain.String()
}

func newRemoteEnv(t *testing.T, cri bool, layers ...[]byte) *remoteEnv {
	t.Helper()
	requireTools(t, "containerd", "ctr", "runc", "docker-registry", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "containerd and overlay mounts need root")
	}
	reg := startDebianRegistry(t)
	r := &remoteEnv{front: newBlobLog(t, reg.Host)}
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	if len(layers) == 0 {
		var tarBytes []byte
		tarBytes, r.release = runnableTar(t, 1, staticCat(t))
		layers = [][]byte{tarBytes}
	}
	r.layers, r.chainID = pushLayers(t, pusher, layers, reg.Host+"/interop/snap:v1")
	r.layer = r.layers[0]
	if r.base, err = os.MkdirTemp("/var/tmp", "kura-interop-snap-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(r.base) })
	t.Cleanup(func() { unmountUnder(t, filepath.Join(r.base, "snapshotter", "layers")) }) // after containerd
	regConf := filepath.Join(r.base, "registries.conf")
	if err := os.WriteFile(regConf, []byte(fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\ninsecure = true\n", r.front.Host, reg.Host)), 0o644); err != nil {
		t.Fatal(err)
	}
	if cri {
		r.e = startContainerdConf(t, r.base, "", criConf(r.front.Host), "--registries-conf", regConf)
	} else {
		r.e = startContainerd(t, r.base, "--registries-conf", regConf)
	}
	r.ref = r.front.Host + "/interop/snap:v1"
	r.front.take()
	return r
}

// criPull pulls ref as the CRI plugin does (unpack into "kura", CRI's snapshot labels) and
// checks that the chain ID's snapshot is the one Kura's remote path committed.
func criPull(t *testing.T, e *ctrEnv, ref, chainID string) {
	t.Helper()
	client, err := containerd.New(e.sock, containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := clientPull(ctx, client, ref); err != nil {
		t.Fatalf("pull: %v\n%s", err, e.snap.log())
	}
	info, err := client.SnapshotService("kura").Stat(ctx, chainID)
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != snapshots.KindCommitted || info.Labels["containerd.io/snapshot/kura.remote"] != "true" {
		t.Fatalf("snapshot %s after the pull: %+v, want the committed snapshot of Kura's remote path\n%s", chainID, info, e.snap.log())
	}
}

// clientPull pulls as the CRI plugin does: unpack into "kura", CRI's snapshot labels.
func clientPull(ctx context.Context, client *containerd.Client, ref string) error {
	_, err := client.Pull(ctx, ref, containerd.WithPullUnpack, containerd.WithPullSnapshotter("kura"),
		containerd.WithResolver(docker.NewResolver(docker.ResolverOptions{PlainHTTP: true})),
		containerd.WithImageHandlerWrapper(snapshotters.AppendInfoHandlerWrapper(ref)))
	return err
}

// TestSnapshotterKilledDuringPull: the snapshotter killed with SIGKILL while the remote path
// pulls a layer. containerd's pull fails (it is not left waiting); the snapshotter restarted,
// the next pull completes through the remote path without containerd fetching the layer blob,
// a container runs, and Kura's store is fsck-clean.
func TestSnapshotterKilledDuringPull(t *testing.T) {
	r := newRemoteEnv(t, false)
	client, err := containerd.New(r.e.sock, containerd.WithDefaultNamespace("default"))
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pulling := r.e.snap.when("pulling for the layer store")
	errc := make(chan error, 1)
	go func() { errc <- clientPull(ctx, client, r.ref) }()
	select {
	case <-pulling:
	case err := <-errc:
		t.Fatalf("pull ended (%v) before the snapshotter pulled\n%s", err, r.e.snap.log())
	}
	r.e.snap.stop(t, syscall.SIGKILL)
	if err := <-errc; err == nil {
		t.Fatalf("pull succeeded though the snapshotter was killed while answering it")
	} else {
		t.Logf("pull with the snapshotter killed: %v", err)
	}
	r.e.snap = startDaemon(t, exec.Command(testkit.Kura(t), r.e.snapArgs...), "client connected")
	r.front.take()
	criPull(t, r.e, r.ref, r.chainID)
	if gets := r.front.take(); contains(gets, r.layer) {
		t.Fatalf("containerd fetched the layer blob %s (GETs %v)", r.layer, gets)
	}
	if out := r.e.ctr(t, "run", "--rm", "--snapshotter", "kura", r.ref, "after-kill", "/bin/cat", "/etc/os-release"); out != r.release {
		t.Fatalf("container printed %q, want %q", out, r.release)
	}
	if out, err := exec.Command(testkit.Kura(t), "--root", filepath.Join(r.base, "store"), "fsck").CombinedOutput(); err != nil {
		t.Fatalf("kura fsck after the kill: %v\n%s", err, out)
	}
}

// TestSnapshotterKilledWithContainerRunning: a container on a remote-path layer runs (blocked
// reading a FIFO bound in from the host); the snapshotter is killed with SIGKILL and
// containerd restarted under it. The container is still running and reads the image's bytes
// (an exec in it prints its file); with the snapshotter back, containerd removes it.
func TestSnapshotterKilledWithContainerRunning(t *testing.T) {
	r := newRemoteEnv(t, false)
	criPull(t, r.e, r.ref, r.chainID)
	fifo := filepath.Join(r.base, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("kura-interop-running-%d", os.Getpid()) // runc's state directory is shared
	r.e.ctr(t, "run", "-d", "--snapshotter", "kura", "--mount", "type=bind,src="+fifo+",dst=/fifo,options=rbind:ro",
		r.ref, id, "/bin/cat", "/fifo")
	t.Cleanup(func() { // on failure: no container outlives the test (before containerd stops)
		exec.Command("ctr", "--address", r.e.sock, "task", "delete", "--force", id).Run()
	})
	r.e.snap.stop(t, syscall.SIGKILL)
	if err := r.e.ctd.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("containerd on SIGTERM: %v", err)
	}
	r.e.ctd = startDaemon(t, exec.Command("containerd", r.e.ctd.cmd.Args[1:]...), "containerd successfully booted")
	if out := r.e.ctr(t, "task", "exec", "--exec-id", "check", id, "/bin/cat", "/etc/os-release"); out != r.release {
		t.Fatalf("exec in the running container printed %q, want %q", out, r.release)
	}
	if out := r.e.ctr(t, "task", "ls"); !strings.Contains(out, "RUNNING") {
		t.Fatalf("task list after the drill:\n%s", out)
	}
	r.e.snap = startDaemon(t, exec.Command(testkit.Kura(t), r.e.snapArgs...), "client connected") // containerd's backoff
	r.e.ctr(t, "task", "delete", "--force", id)
	r.e.ctr(t, "container", "rm", id)
	if out := r.e.ctr(t, "snapshots", "--snapshotter", "kura", "ls"); strings.Contains(out, "Active") {
		t.Fatalf("the container's snapshot is left:\n%s", out)
	}
}

// criConf makes the CRI plugin use Kura's snapshotter and pass it the image labels (the
// set-up docs/snapshotter.md gives), and reach the test's plain-HTTP registry at host.
func criConf(host string) string {
	return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "kura"
  disable_snapshot_annotations = false
[plugins."io.containerd.grpc.v1.cri".registry.mirrors.%q]
  endpoint = ["http://%s"]
`, host, host)
}

// TestSnapshotterCRI: the CRI plugin of containerd 1.6, configured as docs/snapshotter.md
// says, pulls an image through the CRI API (PullImage, as the kubelet does): the layer comes
// through Kura's remote path and containerd fetches no layer blob; ImageFsInfo answers; and
// RemoveImage removes the image.
func TestSnapshotterCRI(t *testing.T) {
	r := newRemoteEnv(t, true)
	conn, err := grpc.NewClient("unix://"+r.e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	images := runtimeapi.NewImageServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pulled, err := images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: r.ref}})
	if err != nil {
		t.Fatalf("PullImage: %v\n%s", err, r.e.snap.log())
	}
	if gets := r.front.take(); contains(gets, r.layer) {
		t.Fatalf("containerd fetched the layer blob %s (GETs %v)", r.layer, gets)
	}
	if !strings.Contains(r.e.snap.log(), "layer served from the store") {
		t.Fatalf("the layer did not come through the remote path:\n%s", r.e.snap.log())
	}
	fs, err := images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
	if err != nil || len(fs.ImageFilesystems) == 0 {
		t.Fatalf("ImageFsInfo: %v %v", fs, err)
	}
	t.Logf("ImageFsInfo: %v", fs.ImageFilesystems)
	if _, err := images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: pulled.ImageRef}}); err != nil {
		t.Fatalf("RemoveImage: %v", err)
	}
	st, err := images.ImageStatus(ctx, &runtimeapi.ImageStatusRequest{Image: &runtimeapi.ImageSpec{Image: r.ref}})
	if err != nil || st.Image != nil {
		t.Fatalf("image after RemoveImage: %v %v", st, err)
	}
}

// TestSnapshotterRemoteWhiteouts: a two-layer image whose top layer deletes a file and makes a
// directory opaque, pulled as CRI does: both layers come through the remote path (no layer
// GET), and the container sees the merged tree: the deleted file and the opaque directory's
// lower contents are gone.
func TestSnapshotterRemoteWhiteouts(t *testing.T) {
	base, _ := runnableTar(t, 1, staticCat(t))
	top := mergeTar(t, []tar.Header{
		{Name: "app/.wh.version", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/lib/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "app/lib/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/lib/only", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644},
	}, []string{"", "", "", "the only file\n", "ID=top\n"})
	r := newRemoteEnv(t, false, base, top)
	criPull(t, r.e, r.ref, r.chainID)
	gets := r.front.take()
	for _, l := range r.layers {
		if contains(gets, l) {
			t.Fatalf("containerd fetched the layer blob %s (GETs %v)", l, gets)
		}
	}
	if out := r.e.ctr(t, "run", "--rm", "--snapshotter", "kura", r.ref, "wh-top", "/bin/cat", "/etc/os-release", "/app/lib/only"); out != "ID=top\nthe only file\n" {
		t.Fatalf("the upper layer's files read %q", out)
	}
	for i, gone := range []string{"/app/version", "/app/lib/conf-000.txt"} {
		out, err := exec.Command("ctr", "--address", r.e.sock, "run", "--rm", "--snapshotter", "kura", r.ref, fmt.Sprintf("wh-%d", i), "/bin/cat", gone).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "no such file") {
			t.Fatalf("%s in the container: %v %q, want no such file", gone, err, out)
		}
	}
}

// countObjects is the number of objects in the store at root.
func countObjects(t *testing.T, root string) int {
	t.Helper()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := s.Walk(context.Background(), func(store.Info) error { n++; return nil }); err != nil {
		t.Fatal(err)
	}
	return n
}

// tarContents is the set of distinct regular-file contents of a layer tar.
func tarContents(t *testing.T, b []byte) map[digest.Digest]bool {
	t.Helper()
	out := map[digest.Digest]bool{}
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			d, err := digest.FromReader(tr)
			if err != nil {
				t.Fatal(err)
			}
			out[d] = true
		}
	}
}

func kuraFsck(t *testing.T, root string) {
	t.Helper()
	if out, err := exec.Command(testkit.Kura(t), "--root", root, "fsck").CombinedOutput(); err != nil {
		t.Errorf("kura fsck: %v\n%s", err, out)
	}
}
