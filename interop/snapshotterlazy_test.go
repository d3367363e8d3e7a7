package interop

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/internal/testkit"
)

// TestSnapshotterLazyCRIPod: kura snapshotter --lazy under containerd 1.6.20's CRI plugin, the
// background fetch held back: PullImage returns with the layers pending (a lazy pull each,
// their placeholders marked by the fill service inside the snapshotter), the pod's pause
// container and an HTTP server start and the server answers its GET, every byte they read
// fetched on first access, while the pending pulls are still in the store; containerd fetched
// no layer blob. Then the snapshotter is killed (SIGKILL) under the running server and started
// again without the hold: it resumes the pending pulls, which complete (each layer's DiffID
// verified by the partial import), the snapshots move onto the complete layers, the running
// server still answers, a new container starts on the complete layers, and kura fsck is clean.
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
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob (GETs %v)", gets)
	}

	// The snapshotter killed under the running server, then started without the hold.
	p.e.snap.stop(t, syscall.SIGKILL)
	args := slicesWithout(p.e.snapArgs, "--lazy-background-after", "1h")
	p.e.snap = startDaemon(t, exec.Command(testkit.Kura(t), args...), "client connected") // containerd's backoff
	waitLazyDone(ctx, t, p, root)
	if got := httpGet(ctx, t, "http://"+addr+"/index.html"); got != webPage(1) {
		t.Fatalf("after the pull completed the running server answered %q", got)
	}
	if left := mountsUnder(t, filepath.Join(p.base, "snapshotter", "layers", "pending")); len(left) != 0 {
		t.Fatalf("pending layer mounts left attached after completion: %v", left)
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
