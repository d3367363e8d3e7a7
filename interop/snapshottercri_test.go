package interop

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/store"
)

// webTool is the one static program of the CRI test's images: run as /pause it waits for
// SIGTERM (the sandbox's pause container); "serve ADDR DIR" serves DIR over HTTP until SIGTERM;
// "cat FILE..." copies files to stdout.
const webTool = `package main

import (
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
)

func main() {
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	switch {
	case filepath.Base(os.Args[0]) == "pause":
		<-stop
	case len(os.Args) == 4 && os.Args[1] == "serve":
		go func() { <-stop; os.Exit(0) }()
		os.Stdout.WriteString("serving " + os.Args[3] + " on " + os.Args[2] + "\n")
		err := http.ListenAndServe(os.Args[2], http.FileServer(http.Dir(os.Args[3])))
		os.Stderr.WriteString(err.Error() + "\n")
		os.Exit(1)
	case len(os.Args) > 1 && os.Args[1] == "cat":
		for _, a := range os.Args[2:] {
			f, err := os.Open(a)
			if err != nil {
				os.Stderr.WriteString(err.Error() + "\n")
				os.Exit(1)
			}
			io.Copy(os.Stdout, f)
			f.Close()
		}
	default:
		os.Stderr.WriteString("usage: pause | serve ADDR DIR | cat FILE...\n")
		os.Exit(2)
	}
}
`

// buildWebTool builds webTool as a static binary.
func buildWebTool(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	for name, body := range map[string]string{"go.mod": "module webtool\n\ngo 1.22\n", "main.go": webTool} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "tool", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the web tool: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "tool"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// webLayers are the CRI test's layers: base has the tool (and /pause, a link to it, and the
// directories runc mounts over); top(v) has the page version v serves.
func webLayers(t *testing.T, tool []byte) (base []byte, top func(v int) []byte) {
	dirs := []string{"bin/", "dev/", "etc/", "proc/", "sys/", "tmp/", "srv/"}
	var hdrs []tar.Header
	var data []string
	for _, d := range dirs {
		hdrs, data = append(hdrs, tar.Header{Name: d, Typeflag: tar.TypeDir, Mode: 0o755}), append(data, "")
	}
	hdrs = append(hdrs, tar.Header{Name: "bin/tool", Typeflag: tar.TypeReg, Mode: 0o755},
		tar.Header{Name: "pause", Typeflag: tar.TypeSymlink, Linkname: "bin/tool", Mode: 0o777})
	data = append(data, string(tool), "")
	base = mergeTar(t, hdrs, data)
	return base, func(v int) []byte {
		return mergeTar(t, []tar.Header{{Name: "srv/", Typeflag: tar.TypeDir, Mode: 0o755},
			{Name: "srv/index.html", Typeflag: tar.TypeReg, Mode: 0o644}}, []string{"", webPage(v)})
	}
}

// webPage is version v's page, longer than the files a composefs image inlines (64 bytes): its
// content is an object (a placeholder until fetched, in a lazy pull).
func webPage(v int) string {
	return fmt.Sprintf("kura web v%d\n%s\n", v, strings.Repeat("an object, not inlined; ", 4))
}

// criPodEnv is a containerd 1.6 with its CRI plugin on Kura's snapshotter, and three images
// in a registry behind a logging proxy: pause (the base layer), web:v1 and web:v2 (base plus
// a page layer each).
type criPodEnv struct {
	*remoteEnv
	runtime runtimeapi.RuntimeServiceClient
	images  runtimeapi.ImageServiceClient
	blobs   []string // every layer blob of the three images
	tool    []byte
}

// newCRIPodEnv starts the environment; snapArgs are added to the snapshotter's flags.
func newCRIPodEnv(t *testing.T, snapArgs ...string) *criPodEnv {
	t.Helper()
	requireTools(t, "containerd", "containerd-shim-runc-v2", "runc", "docker-registry", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "containerd and overlay mounts need root")
	}
	reg := startDebianRegistry(t)
	p := &criPodEnv{remoteEnv: &remoteEnv{front: newBlobLog(t, reg.Host)}, tool: buildWebTool(t)}
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	base, top := webLayers(t, p.tool)
	d, _ := pushImage(t, pusher, [][]byte{base}, reg.Host+"/interop/pause:1", "/pause")
	p.blobs = append(p.blobs, d...)
	for v := 1; v <= 2; v++ {
		d, _ := pushImage(t, pusher, [][]byte{base, top(v)}, fmt.Sprintf("%s/interop/web:v%d", reg.Host, v), "/bin/tool", "serve", ":80", "/srv")
		p.blobs = append(p.blobs, d...)
	}
	if p.base, err = os.MkdirTemp("/var/tmp", "kura-interop-cri-"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(p.base) })
	t.Cleanup(func() { unmountUnder(t, filepath.Join(p.base, "snapshotter", "layers")) }) // after containerd
	// Kura reaches the registry itself, not through the logging proxy containerd uses, by a
	// mirror in containerd's hosts.toml format (what a node's config_path holds).
	hosts := filepath.Join(p.base, "certs.d")
	if err := os.MkdirAll(filepath.Join(hosts, p.front.Host), 0o755); err != nil {
		t.Fatal(err)
	}
	hostsTOML := fmt.Sprintf("server = %q\n\n[host.%q]\n  capabilities = [\"pull\", \"resolve\"]\n", "https://"+p.front.Host, "http://"+reg.Host)
	if err := os.WriteFile(filepath.Join(hosts, p.front.Host, "hosts.toml"), []byte(hostsTOML), 0o644); err != nil {
		t.Fatal(err)
	}
	p.e = startContainerdConf(t, p.base, "", criPodConf(p.front.Host, p.base), append([]string{"--hosts-dir", hosts}, snapArgs...)...)
	conn, err := grpc.NewClient("unix://"+p.e.sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	p.runtime, p.images = runtimeapi.NewRuntimeServiceClient(conn), runtimeapi.NewImageServiceClient(conn)
	waitCRIReady(t, p.images)
	p.front.take()
	return p
}

// criPodConf is criConf with the sandbox (pause) image served by the test's registry, CNI
// directories of the test's own (empty: the pod uses the node's network), the CRI plugin's
// snapshot statistics (ImageFsInfo) collected every second, and oom_score_adj kept at or
// above containerd's own (this machine's root lacks CAP_SYS_RESOURCE, which the pause
// container's default of -998 needs).
func criPodConf(host, base string) string {
	return fmt.Sprintf(`[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "%s/interop/pause:1"
  stats_collect_period = 1
  restrict_oom_score_adj = true
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %q
  conf_dir = %q
`, host, filepath.Join(base, "cni-bin"), filepath.Join(base, "cni-conf")) + criConf(host)
}

// TestSnapshotterCRIPod: the kubelet's calls over the CRI API against containerd 1.6.20's CRI
// plugin on Kura's snapshotter, whose pulls use a hosts.toml mirror: PullImage, RunPodSandbox (its pause image pulled by containerd
// through Kura), CreateContainer and StartContainer of an HTTP server that answers a GET with
// its image's page, ImageFsInfo (Kura's figures), an update to v2 (a new container from the
// second version, sharing the base layer), then StopContainer, RemoveContainer,
// StopPodSandbox, RemovePodSandbox and RemoveImage. containerd fetched no layer blob.
func TestSnapshotterCRIPod(t *testing.T) {
	p := newCRIPodEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	ref := func(v int) string { return fmt.Sprintf("%s/interop/web:v%d", p.front.Host, v) }
	p.pull(ctx, t, ref(1))
	if !strings.Contains(p.e.snap.log(), "msg=hosts.toml host="+p.front.Host+" location="+p.front.Host+" mirrors=1 used=true") {
		t.Fatalf("the snapshotter did not take the hosts.toml mirror:\n%s", p.e.snap.log())
	}
	logDir := filepath.Join(p.base, "pod-logs")
	sbConfig := &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: "web", Uid: "kura-web-uid", Namespace: "default"},
		LogDirectory: logDir,
		Linux: &runtimeapi.LinuxPodSandboxConfig{SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{
			NamespaceOptions: &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}}},
	}
	sb, err := p.runtime.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: sbConfig})
	if err != nil {
		t.Fatalf("RunPodSandbox: %v\n%s\n%s", err, p.e.snap.log(), p.e.ctd.log())
	}
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob for the pull or the sandbox (GETs %v)", gets)
	}
	id, _ := p.runWeb(ctx, t, sb.PodSandboxId, sbConfig, ref(1), 1)
	p.checkImageFs(ctx, t)

	// The update: v2 pulled (only its page layer is new), the v1 container replaced.
	p.pull(ctx, t, ref(2))
	p.removeContainer(ctx, t, id)
	id, addr := p.runWeb(ctx, t, sb.PodSandboxId, sbConfig, ref(2), 2)
	p.checkSnapshotterDown(ctx, t, "http://"+addr+"/index.html", ref(1))
	p.checkGC(ctx, t, "http://"+addr+"/index.html", ref(1))
	p.removeContainer(ctx, t, id)
	if _, err := p.runtime.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("StopPodSandbox: %v", err)
	}
	if _, err := p.runtime.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.PodSandboxId}); err != nil {
		t.Fatalf("RemovePodSandbox: %v", err)
	}
	for _, r := range []string{ref(1), ref(2), p.front.Host + "/interop/pause:1"} {
		if _, err := p.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: r}}); err != nil {
			t.Fatalf("RemoveImage %s: %v", r, err)
		}
	}
	if out := p.e.ctr(t, "--namespace", "k8s.io", "snapshots", "--snapshotter", "kura", "ls"); strings.Count(out, "\n") != 1 {
		t.Fatalf("snapshots left after RemoveImage:\n%s", out)
	}
	// containerd's gc removed the snapshots through Kura, which took their layer mounts down.
	if left := mountsUnder(t, filepath.Join(p.base, "snapshotter", "layers")); len(left) != 0 {
		t.Fatalf("layer mounts left after RemoveImage: %v", left)
	}
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob (GETs %v)", gets)
	}
	kuraFsck(t, filepath.Join(p.base, "store"))
	kuraGC(t, filepath.Join(p.base, "store"))
	if n := countObjects(t, filepath.Join(p.base, "store")); n != 0 {
		t.Fatalf("kura gc after every image was removed from containerd left %d objects", n)
	}
	kuraFsck(t, filepath.Join(p.base, "store"))
}

// checkGC removes image ref (v1) while the v2 server runs, which containerd's gc follows by
// removing v1's page snapshot through Kura: kura gc then frees v1's page, and nothing of the
// running v2 (its page, the tool of the shared base); the server still answers url.
func (p *criPodEnv) checkGC(ctx context.Context, t *testing.T, url, ref string) {
	t.Helper()
	root := filepath.Join(p.base, "store")
	kuraGC(t, root)
	if !hasObject(t, root, webPage(1)) || !hasObject(t, root, webPage(2)) {
		t.Fatalf("kura gc freed a page while both images were in containerd")
	}
	if _, err := p.images.RemoveImage(ctx, &runtimeapi.RemoveImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("RemoveImage %s: %v", ref, err)
	}
	kuraGC(t, root)
	if hasObject(t, root, webPage(1)) {
		t.Fatalf("kura gc kept v1's page after containerd removed v1:\n%s", p.e.snap.log())
	}
	if !hasObject(t, root, webPage(2)) || !hasObject(t, root, string(p.tool)) {
		t.Fatalf("kura gc freed a file of the running v2 container")
	}
	if got := httpGet(ctx, t, url); got != webPage(2) {
		t.Fatalf("after kura gc the v2 server answered %q", got)
	}
	kuraFsck(t, root)
}

// kuraGC runs kura gc on the store at root.
func kuraGC(t *testing.T, root string) {
	t.Helper()
	if out, err := exec.Command(testkit.Kura(t), "--root", root, "gc").CombinedOutput(); err != nil {
		t.Fatalf("kura gc: %v\n%s", err, out)
	}
}

// hasObject says whether the store at root holds the object of content.
func hasObject(t *testing.T, root, content string) bool {
	t.Helper()
	h := digest.FromString(content).Encoded()
	_, err := os.Stat(filepath.Join(root, "objects", h[:2], h[2:]))
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return err == nil
}

// mountsUnder lists the mount points below dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if strings.HasPrefix(e.Point, dir+"/") {
			out = append(out, e.Point)
		}
	}
	return out
}

// pull is the kubelet's PullImage: the image's layers come through Kura's remote path.
func (p *criPodEnv) pull(ctx context.Context, t *testing.T, ref string) {
	t.Helper()
	if _, err := p.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}}); err != nil {
		t.Fatalf("PullImage %s: %v\n%s", ref, err, p.e.snap.log())
	}
	if gets := p.front.take(); p.anyBlob(gets) {
		t.Fatalf("containerd fetched a layer blob pulling %s (GETs %v)", ref, gets)
	}
}

func (p *criPodEnv) anyBlob(gets []string) bool {
	for _, b := range p.blobs {
		if contains(gets, b) {
			return true
		}
	}
	return false
}

// createWeb creates and starts the web server of image ref (version v) serving /srv on a free
// port of the node's network, logging to web-v<v>.log. It returns the container's ID and address.
func (p *criPodEnv) createWeb(ctx context.Context, t *testing.T, sandbox string, sbConfig *runtimeapi.PodSandboxConfig, ref string, v int) (string, string) {
	t.Helper()
	addr := freeAddr(t)
	c, err := p.runtime.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: sandbox, SandboxConfig: sbConfig,
		Config: &runtimeapi.ContainerConfig{Metadata: &runtimeapi.ContainerMetadata{Name: fmt.Sprintf("web-v%d", v)},
			Image: &runtimeapi.ImageSpec{Image: ref}, Command: []string{"/bin/tool", "serve", addr, "/srv"},
			LogPath: fmt.Sprintf("web-v%d.log", v)}})
	if err != nil {
		t.Fatalf("CreateContainer: %v\n%s", err, p.e.snap.log())
	}
	if _, err := p.runtime.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		t.Fatalf("StartContainer: %v", err)
	}
	return c.ContainerId, addr
}

// runWeb creates and starts the web server of image ref on a free port of the node's network,
// and checks it answers a GET with version v's page, read from the image through Kura, and
// that an exec in it reads the same file. It returns the container's ID and address.
func (p *criPodEnv) runWeb(ctx context.Context, t *testing.T, sandbox string, sbConfig *runtimeapi.PodSandboxConfig, ref string, v int) (string, string) {
	t.Helper()
	id, addr := p.createWeb(ctx, t, sandbox, sbConfig, ref, v)
	if got := httpGet(ctx, t, "http://"+addr+"/index.html"); got != webPage(v) {
		t.Fatalf("the v%d server answered %q, want %q", v, got, webPage(v))
	}
	ex, err := p.runtime.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: []string{"/bin/tool", "cat", "/srv/index.html"}, Timeout: 30})
	if err != nil || ex.ExitCode != 0 || string(ex.Stdout) != webPage(v) {
		t.Fatalf("exec in the v%d container: %v, exit %d, %q %q", v, err, ex.GetExitCode(), ex.GetStdout(), ex.GetStderr())
	}
	log, err := os.ReadFile(filepath.Join(sbConfig.LogDirectory, fmt.Sprintf("web-v%d.log", v)))
	if err != nil || !strings.Contains(string(log), "serving /srv on "+addr) {
		t.Fatalf("the v%d container's log: %q %v", v, log, err)
	}
	return id, addr
}

// checkSnapshotterDown stops the snapshotter (SIGTERM) under the running v2 server: the server
// still answers url with v2's page, and a PullImage fails (the kubelet retries it); the
// snapshotter restarted, the same PullImage succeeds through the remote path.
func (p *criPodEnv) checkSnapshotterDown(ctx context.Context, t *testing.T, url, ref string) {
	t.Helper()
	if err := p.e.snap.stop(t, syscall.SIGTERM); err != nil && !strings.Contains(err.Error(), "143") {
		t.Fatalf("snapshotter on SIGTERM: %v\n%s", err, p.e.snap.log())
	}
	if got := httpGet(ctx, t, url); got != webPage(2) {
		t.Fatalf("with the snapshotter down the v2 server answered %q", got)
	}
	_, err := p.images.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}})
	if err == nil {
		t.Fatalf("PullImage succeeded with the snapshotter down")
	}
	t.Logf("PullImage with the snapshotter down: %v", err)
	p.e.snap = startDaemon(t, exec.Command(testkit.Kura(t), p.e.snapArgs...), "client connected") // containerd's backoff
	p.pull(ctx, t, ref)
}

func (p *criPodEnv) removeContainer(ctx context.Context, t *testing.T, id string) {
	t.Helper()
	if _, err := p.runtime.StopContainer(ctx, &runtimeapi.StopContainerRequest{ContainerId: id, Timeout: 10}); err != nil {
		t.Fatalf("StopContainer: %v", err)
	}
	if _, err := p.runtime.RemoveContainer(ctx, &runtimeapi.RemoveContainerRequest{ContainerId: id}); err != nil {
		t.Fatalf("RemoveContainer: %v", err)
	}
}

// checkImageFs waits for the CRI plugin's statistics to include Kura's snapshots (it collects
// them every stats_collect_period) and checks ImageFsInfo counts at least the base layer's
// tool, whose files live in Kura's store.
func (p *criPodEnv) checkImageFs(ctx context.Context, t *testing.T) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		fs, err := p.images.ImageFsInfo(ctx, &runtimeapi.ImageFsInfoRequest{})
		if err != nil || len(fs.ImageFilesystems) != 1 {
			t.Fatalf("ImageFsInfo: %v %v", fs, err)
		}
		u := fs.ImageFilesystems[0]
		if u.UsedBytes.GetValue() >= uint64(len(p.tool)) && u.InodesUsed.GetValue() > 0 {
			t.Logf("ImageFsInfo: %v", u)
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("ImageFsInfo still reports %v (the tool alone is %d bytes)", u, len(p.tool))
		case <-tick.C:
		}
	}
}

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// httpGet GETs url, retrying while the server is not listening yet (the container's process
// has just been started), and returns the body.
func httpGet(ctx context.Context, t *testing.T, url string) string {
	t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		resp, err := http.Get(url)
		if err == nil {
			defer resp.Body.Close()
			b, err := io.ReadAll(resp.Body)
			if err != nil || resp.StatusCode != http.StatusOK {
				t.Fatalf("GET %s: %s %v", url, resp.Status, err)
			}
			return string(b)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s: %v", url, err)
		case <-tick.C:
		}
	}
}
