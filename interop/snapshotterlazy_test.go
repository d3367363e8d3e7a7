package interop

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/store"
)

// TestSnapshotterLazyCRIPod: kura snapshotter --lazy under containerd 1.6.20's CRI plugin, the
// background fetch held back: PullImage returns with the layers pending (a lazy pull each,
// their placeholders marked by the fill service inside the snapshotter), the pod's pause
// container and an HTTP server start and the server answers its GET, every byte they read
// fetched on first access, while the pending pulls are still in the store; containerd fetched
// no layer blob. Then the snapshotter is killed (SIGKILL) under the running server and started
// again without the hold: it resumes the pending pulls, which complete (each layer's DiffID
// verified by the partial import), the snapshots move onto the complete layers, the pulls'
// private names go and kura gc keeps what the snapshots use, the running servers still answer, a new container starts on the complete layers, and kura fsck is clean.
func TestSnapshotterLazyCRIPod(t *testing.T) {
	p := newCRIPodEnv(t, "--lazy", "--lazy-background-after", "1h")
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	root := filepath.Join(p.base, "store")
	ref := fmt.Sprintf("%s/interop/web:v1", p.front.Host)
	p.pull(ctx, t, ref)
	if !strings.Contains(p.e.snap.log(), "pending layer mounted") {
		t.Fatalf("the layers were not served by a lazy pull:\n%s", p.e.snap.log())
	}
	sbConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "kura-lazy-uid", Namespace: "default"},
		LogDirectory: filepath.Join(p.base, "pod-logs"),
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
	}
	sb, err := p.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbConfig})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s", err, p.e.snap.log())
	}
	id, addr := p.runWeb(ctx, t, sb.PodSandboxId, sbConfig, ref, 1)
	if n := pendingPulls(t, root); n == 0 {
		t.Fatalf("no lazy pull is pending after the server answered: the layers were downloaded\n%s", p.e.snap.log())
	}
	if hasLayerRecords(t, root) {
		t.Fatalf("a layer was recorded while the background fetch was held")
	}
	// A v2 server started, its page never read: its placeholder stays empty.
	ref2 := fmt.Sprintf("%s/interop/web:v2", p.front.Host)
	p.pull(ctx, t, ref2)
	id2, url2 := p.startWeb(ctx, t, sb.PodSandboxId, sbConfig, ref2, 2)
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob (GETs %v)", gets)
	}

	p.checkRemovedWhilePending(ctx, t)

	// The snapshotter killed under the running servers: the v1 page, filled, still reads; the
	// v2 page's read fails (a short read) and never gives zeros. Then it is started without the
	// hold, resumes the pending pulls and fills the v2 page for the running server.
	p.e.snap.stop(t, syscall.SIGKILL)
	if got := httpGet(ctx, t, "http://"+addr+"/index.html"); got != webPage(1) {
		t.Fatalf("with the snapshotter killed the v1 server answered %q", got)
	}
	if body, err := getOnce(url2); err == nil && body == webPage(2) || strings.Contains(body, "\x00") {
		t.Fatalf("with the snapshotter killed an unfilled page read %q (err %v): want an error, never zeros", body, err)
	} else {
		t.Logf("unfilled page with the filler killed: %q, %v", body, err)
	}
	args := slicesWithout(p.e.snapArgs, "--lazy-background-after", "1h")
	p.e.snap = startDaemon(t, exec.Command(testkit.Kura(t), args...), "client connected") // containerd's backoff
	waitLazyDone(ctx, t, p, root)
	if got := httpGet(ctx, t, "http://"+addr+"/index.html"); got != webPage(1) {
		t.Fatalf("after the pull completed the running server answered %q", got)
	}
	if got := httpGet(ctx, t, url2); got != webPage(2) {
		t.Fatalf("after the pull completed the v2 server answered %q", got)
	}
	// The pulls' private names are gone: the snapshots' layer mounts alone keep what runs.
	if out, err := exec.Command(testkit.Kura(t), "--root", root, "images").CombinedOutput(); err != nil || strings.Contains(string(out), "kura-snapshotter-lazy") {
		t.Fatalf("kura images after completion: %v\n%s", err, out)
	}
	kuraGC(t, root)
	if !hasObject(t, root, webPage(1)) || !hasObject(t, root, webPage(2)) || !hasObject(t, root, string(p.tool)) {
		t.Fatalf("kura gc after completion freed a file of a running container")
	}
	if hasObject(t, root, webPage(3)) {
		t.Fatalf("kura gc kept the page of v3, which containerd removed while its pull was pending")
	}
	if got := httpGet(ctx, t, url2); got != webPage(2) {
		t.Fatalf("after kura gc the v2 server answered %q", got)
	}
	p.removeContainer(ctx, t, id2)
	if left := mountsUnder(t, filepath.Join(p.base, "snapshotter", "layers", "pending")); len(left) != 0 {
		t.Fatalf("pending layer mounts left attached after completion: %v", left)
	}
	// Each layer is recorded under its DiffID (the sha256 of its tar), which the completion checked.
	base, top := webLayers(t, p.tool)
	for _, l := range [][]byte{base, top(1), top(2)} {
		if _, err := os.Stat(filepath.Join(root, "layers", digest.FromBytes(l).Encoded(), "layer.json")); err != nil {
			t.Fatalf("layer %s after completion: %v", digest.FromBytes(l), err)
		}
	}
	kuraFsck(t, root)
	p.removeContainer(ctx, t, id)
	id, _ = p.runWeb(ctx, t, sb.PodSandboxId, sbConfig, ref, 1) // on the complete layers
	p.removeContainer(ctx, t, id)
	if _, err := p.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := p.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob (GETs %v)", gets)
	}
	kuraFsck(t, root)
}

// checkRemovedWhilePending pushes web:v3, pulls it (lazily, held) and removes it through the
// CRI before any container used it: the pending mount of its page layer is detached at once;
// its pull stays pending until the restarted snapshotter resumes it (no snapshot is left on it).
func (p *criPodEnv) checkRemovedWhilePending(ctx context.Context, t *testing.T) {
	t.Helper()
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	base, top := webLayers(t, p.tool)
	ref3 := fmt.Sprintf("%s/interop/web:v3", p.front.Host)
	d, _ := pushImage(t, pusher, [][]byte{base, top(3)}, ref3, "/bin/tool", "serve", ":80", "/srv")
	p.blobs = append(p.blobs, d...)
	p.front.take()
	pending := filepath.Join(p.base, "snapshotter", "layers", "pending")
	before := len(mountsUnder(t, pending))
	p.pull(ctx, t, ref3)
	if n := len(mountsUnder(t, pending)); n != before+1 {
		t.Fatalf("%d pending layer mounts after pulling v3, want %d\n%s", n, before+1, p.e.snap.log())
	}
	if _, err := p.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref3}}); err != nil {
		t.Fatalf("RemoveImage %s: %v", ref3, err)
	}
	if n := len(mountsUnder(t, pending)); n != before {
		t.Fatalf("%d pending layer mounts after removing v3, want %d\n%s", n, before, p.e.snap.log())
	}
}

// startWeb creates and starts the web server of image ref without reading its page: it waits
// for the server to answer a GET of a missing file (a lookup: metadata only). It returns the container's ID and
// its page's URL.
func (p *criPodEnv) startWeb(ctx context.Context, t *testing.T, sandbox string, sbConfig *runtimeapi.PodSandboxConfig, ref string, v int) (string, string) {
	t.Helper()
	id, addr := p.createWeb(ctx, t, sandbox, sbConfig, ref, v)
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for { // a missing file's 404: the server listens (FileServer serves a directory's index.html)
		_, err := getOnce("http://" + addr + "/missing")
		if err != nil && strings.Contains(err.Error(), "404") {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the v%d server does not answer: %v", v, err)
		case <-tick.C:
		}
	}
	return id, "http://" + addr + "/index.html"
}

// getOnce GETs url once and returns what of the body arrived.
func getOnce(url string) (string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s", resp.Status)
	}
	return string(b), err
}

// waitCRIReady waits until containerd's CRI plugin answers: it initialises after containerd
// logs that it booted, and answers "server is not initialized yet" until then.
func waitCRIReady(t *testing.T, images runtimeapi.ImageServiceClient) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		_, err := images.ListImages(ctx, &runtimeapi.ListImagesRequest{})
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the CRI plugin does not answer: %v", err)
		case <-tick.C:
		}
	}
}

// waitLazyDone waits until the store has no pending lazy pull and no snapshot is on a pending
// layer, then checks each layer was recorded by the completion (its DiffID checked).
func waitLazyDone(ctx context.Context, t *testing.T, p *criPodEnv, root string) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		// containerd keeps the labels a snapshot had when committed: the snapshotter's own
		// metadata says which are still on a pending layer.
		meta, err := os.ReadFile(filepath.Join(p.base, "snapshotter", "snapshots", "metadata.json"))
		if err != nil {
			t.Fatal(err)
		}
		pending := strings.Count(string(meta), "kura.lazy")
		if pendingPulls(t, root) == 0 && pending == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("lazy pulls still pending (%d snapshots)\n%s", pending, p.e.snap.log())
		case <-tick.C:
		}
	}
	if !hasLayerRecords(t, root) || !strings.Contains(p.e.snap.log(), "lazy pull complete") {
		t.Fatalf("the pending pulls ended without recording their layers\n%s", p.e.snap.log())
	}
}

// pendingPulls counts the pending lazy pulls of the store at root (lazy/<manifest hex>).
func pendingPulls(t *testing.T, root string) int {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "lazy"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	n := 0
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), ".") {
			n++
		}
	}
	return n
}

// hasLayerRecords says whether the store at root has recorded any layer.
func hasLayerRecords(t *testing.T, root string) bool {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(root, "layers"))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return len(entries) > 0
}

// slicesWithout is args without the flag and value given.
func slicesWithout(args []string, flag, value string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		if args[i] == flag && i+1 < len(args) && args[i+1] == value {
			i++
			continue
		}
		out = append(out, args[i])
	}
	return out
}
