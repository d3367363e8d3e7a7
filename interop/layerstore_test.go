package interop

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/ociimport"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarstream"
)

// blobLog is a reverse proxy in front of a registry that records the blob GETs it forwards:
// podman talks to it, Kura's layer store to the registry behind it, so what it records is what
// podman fetched.
type blobLog struct {
	Host string
	mu   sync.Mutex
	gets []string // digests of blob GETs
}

func newBlobLog(t *testing.T, upstream string) *blobLog {
	t.Helper()
	b := &blobLog{}
	target, _ := url.Parse("http://" + upstream)
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if i := strings.Index(r.URL.Path, "/blobs/"); r.Method == http.MethodGet && i >= 0 {
			b.mu.Lock()
			b.gets = append(b.gets, r.URL.Path[i+len("/blobs/"):])
			b.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	b.Host = srv.Listener.Addr().String()
	return b
}

// take returns the blob GETs recorded since the last call.
func (b *blobLog) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	g := b.gets
	b.gets = nil
	return g
}

// staticCat builds a static program that copies the files named by its arguments to stdout:
// the command the test containers run (the machine has no static busybox).
func staticCat(t *testing.T) []byte {
	t.Helper()
	dir := t.TempDir()
	src := "package main\n\nimport (\n\t\"io\"\n\t\"os\"\n)\n\nfunc main() {\n\tfor _, a := range os.Args[1:] {\n\t\tf, err := os.Open(a)\n\t\tif err != nil {\n\t\t\tos.Stderr.WriteString(err.Error() + \"\\n\")\n\t\t\tos.Exit(1)\n\t\t}\n\t\tio.Copy(os.Stdout, f)\n\t\tf.Close()\n\t}\n}\n"
	for name, body := range map[string]string{"go.mod": "module cat\n\ngo 1.22\n", "main.go": src} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command("go", "build", "-trimpath", "-o", "cat", ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOFLAGS=", "GOWORK=off")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building the static cat: %v\n%s", err, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "cat"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// runnableTar is appTar(version) with /bin/cat and /etc/os-release added: a root file system a
// container can run.
func runnableTar(t *testing.T, version int, cat []byte) ([]byte, string) {
	t.Helper()
	osRelease := fmt.Sprintf("NAME=\"Kura test\"\nVERSION_ID=%d\n", version)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tr := tar.NewReader(bytes.NewReader(appTar(t, version)))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := io.Copy(tw, tr); err != nil {
			t.Fatal(err)
		}
	}
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, f := range []struct {
		h    tar.Header
		data []byte
	}{
		{tar.Header{Name: "bin/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "bin/cat", Typeflag: tar.TypeReg, Mode: 0o755}, cat},
		{tar.Header{Name: "etc/", Typeflag: tar.TypeDir, Mode: 0o755}, nil},
		{tar.Header{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(osRelease)},
	} {
		f.h.ModTime, f.h.Size = mt, int64(len(f.data))
		if err := tw.WriteHeader(&f.h); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes(), osRelease
}

// layerStoreServer is a running kura layer-store serve.
type layerStoreServer struct {
	waiters map[string]chan struct{} // closed when a log line containing the key appears
	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited, err then set
	err     error
	stderr  *bytes.Buffer
	mu      *sync.Mutex
}

// startLayerStore starts the server and returns once it logs that it serves (its mount is made).
func startLayerStore(t *testing.T, args ...string) *layerStoreServer {
	t.Helper()
	cmd := exec.Command(testkit.Kura(t), append([]string{"--log-level", "info"}, args...)...)
	return startDaemon(t, cmd, "layer store serving")
}

// startDaemon starts cmd and returns once its stderr has a line containing ready.
func startDaemon(t *testing.T, cmd *exec.Cmd, ready string) *layerStoreServer {
	t.Helper()
	pr, pw := io.Pipe()
	cmd.Stderr = pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	s := &layerStoreServer{waiters: map[string]chan struct{}{}, cmd: cmd, exited: make(chan struct{}), stderr: &bytes.Buffer{}, mu: &sync.Mutex{}}
	readyc := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 1<<20)
		once := sync.Once{}
		for sc.Scan() {
			s.mu.Lock()
			s.stderr.WriteString(sc.Text() + "\n")
			for k, ch := range s.waiters {
				if strings.Contains(sc.Text(), k) {
					close(ch)
					delete(s.waiters, k)
				}
			}
			s.mu.Unlock()
			if strings.Contains(sc.Text(), ready) {
				once.Do(func() { close(readyc) })
			}
		}
	}()
	go func() { s.err = cmd.Wait(); pw.Close(); close(s.exited) }()
	select {
	case <-readyc:
	case <-s.exited:
		t.Fatalf("%s exited: %v\n%s", cmd.Path, s.err, s.log())
	case <-time.After(time.Minute):
		t.Fatalf("%s did not start\n%s", cmd.Path, s.log())
	}
	return s
}

// when returns a channel closed when the server logs a line containing substr.
func (s *layerStoreServer) when(substr string) <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	ch := make(chan struct{})
	s.waiters[substr] = ch
	return ch
}

func (s *layerStoreServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

// stop sends sig and waits for the server to exit (at once if it has).
func (s *layerStoreServer) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	select {
	case <-s.exited:
		return s.err
	default:
	}
	s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
		return s.err
	case <-time.After(time.Minute):
		t.Fatalf("kura layer-store serve did not stop on %v\n%s", sig, s.log())
		return nil
	}
}

func mountedAt(t *testing.T, dir string) (string, bool) {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	e, ok := mountinfo.Top(entries, dir)
	return e.FSType, ok
}

// addLayerStore adds additionallayerstores to the private podman's storage.conf (whose last
// table is [storage.options]).
func addLayerStore(t *testing.T, p *podmanEnv, dir string) {
	t.Helper()
	for _, e := range p.env {
		if conf, ok := strings.CutPrefix(e, "CONTAINERS_STORAGE_CONF="); ok {
			f, err := os.OpenFile(conf, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(f, "additionallayerstores = [%q]\n", dir+":ref")
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatal("no CONTAINERS_STORAGE_CONF in the podman environment")
}

// TestLayerStorePodman: Debian's podman 4.3.1 with Kura as its additional layer store pulls a
// kura-pushed zstd:chunked image without fetching a layer blob, shows the image's files, runs a
// container from it and removes it; with the server stopped (SIGTERM unmounts) podman pulls
// normally; a server killed with SIGKILL leaves a stale mount the next server removes, and it
// serves again from what the store holds; fsck finds the store clean.
func TestLayerStorePodman(t *testing.T) {
	for _, mode := range []string{"checkout", "composefs"} {
		t.Run(mode, func(t *testing.T) { testLayerStorePodman(t, mode) })
	}
}

func testLayerStorePodman(t *testing.T, mode string) {
	e := newALSEnv(t, mode)
	front, p, mnt, root := e.front, e.p, e.mnt, e.root
	tars, releases, layers, blobSizes := e.tars, e.releases, e.layers, e.blobSizes
	v1 := front.Host + "/interop/ls:v1"
	alsPodman(t, p, "pull", "--tls-verify=false", v1)
	checkNoLayerGET(t, front.take(), layers[1], e.srv)
	checkAdditionalLayers(t, p, mnt, 1)
	m := strings.TrimSpace(alsPodman(t, p, "image", "mount", v1))
	checkTreeAgainstTar(t, m, tars[1])
	alsPodman(t, p, "image", "unmount", v1)
	if out := alsPodman(t, p, runArgs(v1, "/bin/cat", "/etc/os-release")...); out != releases[1] {
		t.Errorf("podman run of v1 printed %q; want %q", out, releases[1])
	}
	checkBlob(t, mnt, v1, layers[1])
	checkPushSave(t, p, front.Host, v1, layers[1], digest.FromBytes(tars[1]))
	alsPodman(t, p, "rmi", v1)
	if out := strings.TrimSpace(alsPodman(t, p, "images", "-q")); out != "" {
		t.Errorf("after podman rmi, podman images -q prints %q", out)
	}

	// Server down: SIGTERM unmounts; podman pulls the layer itself.
	e.srv.stop(t, syscall.SIGTERM)
	if fstype, ok := mountedAt(t, mnt); ok {
		t.Fatalf("after SIGTERM, %s is still mounted (%s)", mnt, fstype)
	}
	v2 := front.Host + "/interop/ls:v2"
	alsPodman(t, p, "pull", "--tls-verify=false", v2)
	if gets := front.take(); !contains(gets, layers[2]) {
		t.Errorf("with the server down podman fetched %v; want its layer %s among them", gets, layers[2])
	}
	if out := alsPodman(t, p, runArgs(v2, "/bin/cat", "/etc/os-release")...); out != releases[2] {
		t.Errorf("podman run of v2 (normal pull) printed %q; want %q", out, releases[2])
	}

	// A server killed with SIGKILL leaves its mount (ENOTCONN); podman pulls normally; the next
	// server removes the stale mount and serves again.
	e.srv = startLayerStore(t, e.serveArgs...)
	e.srv.stop(t, syscall.SIGKILL)
	checkDeadMount(t, mnt)
	// With the dead mount podman still works, however long it has been dead (containers/storage
	// stats PATH at every command: the kernel answers from the root's cached attributes): it
	// pulls normally, removes, and runs containers from images it pulled itself.
	alsPodman(t, p, "pull", "--tls-verify=false", v1)
	if gets := front.take(); !contains(gets, layers[1]) {
		t.Errorf("with a dead layer store mount podman fetched %v; want its layer %s among them", gets, layers[1])
	}
	alsPodman(t, p, "rmi", v1)
	if out := alsPodman(t, p, runArgs(v2, "/bin/cat", "/etc/os-release")...); out != releases[2] {
		t.Errorf("podman run of v2 (normal pull) with the dead mount printed %q; want %q", out, releases[2])
	}
	checkDeadMount(t, mnt)
	e.srv = startLayerStore(t, e.serveArgs...)
	alsPodman(t, p, "pull", "--tls-verify=false", v1)
	checkNoLayerGET(t, front.take(), layers[1], e.srv)
	if out := alsPodman(t, p, runArgs(v1, "/bin/cat", "/etc/os-release")...); out != releases[1] {
		t.Errorf("podman run of v1 after the restart printed %q; want %q", out, releases[1])
	}
	// The update through the layer store: Kura fetches only what v1 lacks; podman no layer.
	alsPodman(t, p, "rmi", v2)
	alsPodman(t, p, "pull", "--tls-verify=false", v2)
	checkNoLayerGET(t, front.take(), layers[2], e.srv)
	received := pulledBytes(t, e.srv, v2)
	t.Logf("v2 through the layer store: Kura received %d bytes of a %d-byte layer blob; podman fetched no layer", received, blobSizes[2])
	if received <= 0 || received > blobSizes[2]/4 {
		t.Errorf("Kura received %d bytes for v2, whose blob is %d bytes: not a partial pull", received, blobSizes[2])
	}
	if out := alsPodman(t, p, runArgs(v2, "/bin/cat", "/etc/os-release")...); out != releases[2] {
		t.Errorf("podman run of v2 through the layer store printed %q; want %q", out, releases[2])
	}
	// With composefs, v2's layer, an update of v1's, has an image of what it changes stacked
	// above v1's (docs/layerstore.md, Stacked images): podman sees v2's whole tree.
	m = strings.TrimSpace(alsPodman(t, p, "image", "mount", v2))
	checkTreeAgainstTar(t, m, tars[2])
	alsPodman(t, p, "image", "unmount", v2)
	if stacked, _ := filepath.Glob(filepath.Join(e.state, "composefs", "*.above-*")); mode == "composefs" && len(stacked) != 1 {
		t.Errorf("composefs images stacked above another: %v; want v2's", stacked)
	}
	out, err := exec.Command(testkit.Kura(t), "--root", root, "fsck").CombinedOutput()
	if err != nil {
		t.Errorf("kura fsck after the layer store's pulls: %v\n%s", err, out)
	}
}

// checkDeadMount checks that the layer store mount at mnt is a killed server's: there, and
// every lookup through it fails ENOTCONN (so what podman does next runs against a dead mount).
func checkDeadMount(t *testing.T, mnt string) {
	t.Helper()
	if _, ok := mountedAt(t, mnt); !ok {
		t.Fatalf("no mount at %s: the dead-mount path is not exercised", mnt)
	}
	if _, err := os.Stat(filepath.Join(mnt, "x", "diff")); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("a lookup through the killed server's mount: %v; want ENOTCONN", err)
	}
}

// alsPodman runs the private podman with no storage flags: its storage.conf names the same
// root and run root, and podman 4.3.1 drops storage.conf's driver options, additionallayerstores
// among them, when --root, --runroot or --storage-driver is given (podman info: graphOptions {}).
func alsPodman(t *testing.T, p *podmanEnv, a ...string) string {
	t.Helper()
	return run(t, p.env, "podman", a...)
}

// TestLayerStoreKilledDuringPull: the server is killed with SIGKILL as it starts pulling for a
// podman pull. podman completes (from the registry) or fails cleanly, never hangs; an image
// mounted before keeps reading the right bytes; the store is fsck-clean; a restarted server
// serves the image.
func TestLayerStoreKilledDuringPull(t *testing.T) {
	for _, mode := range []string{"checkout", "composefs"} {
		t.Run(mode, func(t *testing.T) { testKilledDuringPull(t, mode) })
	}
}

// pullKillingServer runs podman pull of ref and kills the server (SIGKILL) as its log first
// says marker: podman must end (pulled or failed), never hang. It returns podman's output and
// error.
func pullKillingServer(t *testing.T, e *alsEnv, ref, marker string) (string, error) {
	t.Helper()
	reached := e.srv.when(marker)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pull := exec.CommandContext(ctx, "podman", "pull", "--tls-verify=false", ref)
	pull.Env = e.p.env
	var out bytes.Buffer
	pull.Stdout, pull.Stderr = &out, &out
	if err := pull.Start(); err != nil {
		t.Fatal(err)
	}
	<-reached
	e.srv.stop(t, syscall.SIGKILL)
	err := pull.Wait()
	if ctx.Err() != nil {
		t.Fatalf("podman pull hung after the server was killed\n%s", out.String())
	}
	return out.String(), err
}

func testKilledDuringPull(t *testing.T, mode string) {
	e := newALSEnv(t, mode)
	v1, v2 := e.front.Host+"/interop/ls:v1", e.front.Host+"/interop/ls:v2"
	alsPodman(t, e.p, "pull", "--tls-verify=false", v2)
	checkNoLayerGET(t, e.front.take(), e.layers[2], e.srv)
	m2 := strings.TrimSpace(alsPodman(t, e.p, "image", "mount", v2))
	t.Cleanup(func() { exec.Command("podman", "image", "unmount", "--all", "--force").Run() })

	out, err := pullKillingServer(t, e, v1, "pulling for the layer store")
	t.Logf("podman pull with the server killed mid-pull: %v; layer GETs %v\n%s", err, e.front.take(), out)
	checkTreeAgainstTar(t, m2, e.tars[2]) // mounted before the kill: still the right bytes
	kuraFsck(t, e.root)
	// podman makes containers with the dead mount there from images it pulled itself; the
	// restart removes the mount.
	checkDeadMount(t, e.mnt)
	if err == nil {
		if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/etc/os-release")...); got != e.releases[1] {
			t.Errorf("podman run of the image pulled while the server died printed %q; want %q", got, e.releases[1])
		}
		alsPodman(t, e.p, "rmi", v1)
	}
	e.srv = startLayerStore(t, e.serveArgs...)
	alsPodman(t, e.p, "pull", "--tls-verify=false", v1)
	checkNoLayerGET(t, e.front.take(), e.layers[1], e.srv)
	if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/etc/os-release")...); got != e.releases[1] {
		t.Errorf("podman run of v1 from the restarted server printed %q; want %q", got, e.releases[1])
	}
}

// alsEnv is the set-up of the podman tests: a Debian registry with v1 and v2 of a runnable
// image pushed by Kura, podman's front proxy to it, a layer store server and a private podman
// using it.
type alsEnv struct {
	front            *blobLog
	p                *podmanEnv
	srv              *layerStoreServer
	mnt, root, state string
	serveArgs        []string
	tars             map[int][]byte
	releases, layers map[int]string
	blobSizes        map[int]int64
}

func newALSEnv(t *testing.T, mode string, extra ...string) *alsEnv {
	t.Helper()
	requireTools(t, "podman", "docker-registry", "runc", "conmon", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "the layer store mounts FUSE and podman runs rootful: needs root")
	}
	reg := startDebianRegistry(t)
	front := newBlobLog(t, reg.Host) // what podman uses
	cat := staticCat(t)
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	c := registry.New(registry.WithTLSVerify(false))
	tars, releases, layers, blobSizes := map[int][]byte{}, map[int]string{}, map[int]string{}, map[int]int64{}
	for v := 1; v <= 2; v++ {
		tars[v], releases[v] = runnableTar(t, v, cat)
		rep := pushFromStore(t, pusher, c, tars[v], fmt.Sprintf("ls:v%d", v), fmt.Sprintf("%s/interop/ls:v%d", reg.Host, v))
		layers[v], blobSizes[v] = rep.Layers[0].Digest.String(), rep.Layers[0].Size
	}
	front.take()

	// Kura's store and the layer directories on the file system of podman's (hardlinks).
	base, err := os.MkdirTemp("/var/tmp", "kura-interop-als-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	root, state, mnt := filepath.Join(base, "store"), filepath.Join(base, "state"), filepath.Join(base, "als")
	t.Cleanup(func() { unmountUnder(t, filepath.Join(state, "mnt")) }) // after podman's clean-up
	// A test failing while a killed server's mount is there leaves it: detach it (after the
	// last server's stop) so that base can be removed.
	t.Cleanup(func() { syscall.Unmount(mnt, syscall.MNT_DETACH) })
	// Kura reaches the registry itself, not through podman's front: a registries.conf rewrite.
	regConf := filepath.Join(base, "registries.conf")
	if err := os.WriteFile(regConf, []byte(fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\ninsecure = true\n", front.Host, reg.Host)), 0o644); err != nil {
		t.Fatal(err)
	}
	serveArgs := []string{"--root", root, "layer-store", "serve", mnt, "--state", state, "--registries-conf", regConf, "--diff", mode}
	serveArgs = append(serveArgs, extra...)
	e := &alsEnv{front: front, mnt: mnt, root: root, state: state, serveArgs: serveArgs, tars: tars, releases: releases, layers: layers, blobSizes: blobSizes}
	e.srv = startLayerStore(t, serveArgs...)
	t.Cleanup(func() { e.srv.stop(t, syscall.SIGTERM) })
	if fstype, ok := mountedAt(t, mnt); !ok || fstype != "fuse.kura-layer-store" {
		t.Fatalf("at %s: %q mounted (%v); want the layer store", mnt, fstype, ok)
	}

	e.p = newPodman(t, front.Host)
	addLayerStore(t, e.p, mnt)
	return e
}

// pulledBytes reads, from the server's log, the bytes Kura received pulling ref.
func pulledBytes(t *testing.T, srv *layerStoreServer, ref string) int64 {
	t.Helper()
	var n int64 = -1
	for _, line := range strings.Split(srv.log(), "\n") {
		if strings.Contains(line, "pulled for the layer store") && strings.Contains(line, "ref="+ref+" ") {
			if _, after, ok := strings.Cut(line, "bytesReceived="); ok {
				fmt.Sscan(after, &n)
			}
		}
	}
	if n < 0 {
		t.Fatalf("the server logged no pull of %s\n%s", ref, srv.log())
	}
	return n
}

// checkNoLayerGET fails if podman fetched the layer blob: the layer store must have answered.
func checkNoLayerGET(t *testing.T, gets []string, layer string, srv *layerStoreServer) {
	t.Helper()
	t.Logf("blob GETs podman made: %v", gets)
	if contains(gets, layer) {
		t.Errorf("podman fetched the layer blob %s itself: the layer store did not answer\n%s", layer, srv.log())
	}
}

// checkAdditionalLayers checks that podman made want layers from the layer store: their diff is
// containers/storage's symlink into it.
func checkAdditionalLayers(t *testing.T, p *podmanEnv, mnt string, want int) {
	t.Helper()
	diffs, err := filepath.Glob(filepath.Join(p.root, "overlay", "*", "diff"))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, d := range diffs {
		if target, err := os.Readlink(d); err == nil && strings.HasPrefix(target, mnt+"/") {
			n++
		}
	}
	if n != want {
		t.Errorf("%d of podman's %d layers link into the layer store; want %d", n, len(diffs), want)
	}
}

// checkBlob reads the layer store's blob of a layer as containers/storage does: it must be the
// registry's blob, byte for byte.
func checkBlob(t *testing.T, mnt, ref, layer string) {
	t.Helper()
	p := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(ref)), layer, "blob")
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("reading the blob: %v", err)
	}
	if got := digest.FromBytes(b).String(); got != layer {
		t.Errorf("the layer store's blob hashes to %s; want %s", got, layer)
	}
}

// checkPushSave pushes an image podman took from the layer store to another repository and
// saves it as an oci-archive: both must carry the layer's tar (its DiffID). podman 4.3.1
// recompresses on push (gzip by default), so the pushed layer digest is logged, not compared;
// docker-archive cannot hold the zstd layers of the manifest (podman refuses it for any
// zstd image), hence oci-archive.
func checkPushSave(t *testing.T, p *podmanEnv, host, ref, layer string, diffID digest.Digest) {
	t.Helper()
	dst := host + "/interop/pushed:v1"
	alsPodman(t, p, "push", "--tls-verify=false", ref, dst)
	raw := run(t, p.env, "skopeo", "inspect", "--tls-verify=false", "--raw", "docker://"+dst)
	cfg := run(t, p.env, "skopeo", "inspect", "--tls-verify=false", "--config", "docker://"+dst)
	var m ocispec.Manifest
	var c ocispec.Image
	if err := json.Unmarshal([]byte(raw), &m); err != nil || json.Unmarshal([]byte(cfg), &c) != nil {
		t.Fatalf("pushed manifest %s, config %s: %v", raw, cfg, err)
	}
	if len(c.RootFS.DiffIDs) != 1 || c.RootFS.DiffIDs[0] != diffID {
		t.Errorf("podman push wrote diff_ids %v; want [%s]", c.RootFS.DiffIDs, diffID)
	}
	t.Logf("podman push: layer %s (%s); the source layer is %s", m.Layers[0].Digest, m.Layers[0].MediaType, layer)
	archive := filepath.Join(t.TempDir(), "saved.tar")
	alsPodman(t, p, "save", "--format", "oci-archive", "-o", archive, ref)
	if !archiveHasTar(t, archive, diffID) {
		t.Errorf("podman save wrote no layer tar hashing to %s", diffID)
	}
}

// archiveHasTar says whether an archive holds a file that hashes to d, decompressed.
func archiveHasTar(t *testing.T, archive string, d digest.Digest) bool {
	t.Helper()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return false
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		dr, err := tarstream.Decompress(tr)
		if err != nil {
			continue
		}
		dg := digest.SHA256.Digester()
		io.Copy(dg.Hash(), dr)
		if dg.Digest() == d {
			return true
		}
	}
}

// unmountUnder detaches every mount below dir.
func unmountUnder(t *testing.T, dir string) {
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Error(err)
		return
	}
	for _, e := range entries {
		if strings.HasPrefix(e.Point, dir+"/") {
			if err := syscall.Unmount(e.Point, syscall.MNT_DETACH); err != nil {
				t.Errorf("unmounting %s: %v", e.Point, err)
			}
		}
	}
}

// runArgs runs a container with no network and limits this machine lets runc set: without
// CAP_SYS_RESOURCE (as here) podman's defaults (nofile 1048576, nproc) fail with EPERM.
func runArgs(a ...string) []string {
	return append([]string{"run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"}, a...)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// TestLayerStorePodmanWhiteouts: a two-layer image whose second layer deletes a file and makes
// a directory opaque. podman takes both layers from the layer store, and its container sees
// the merged tree overlayfs makes of them: the whiteout hides the file, the opaque directory
// hides the lower one's contents.
func TestLayerStorePodmanWhiteouts(t *testing.T) {
	for _, mode := range []string{"checkout", "composefs"} {
		t.Run(mode, func(t *testing.T) { testLayerStoreWhiteouts(t, mode) })
	}
}

func testLayerStoreWhiteouts(t *testing.T, mode string) {
	requireTools(t, "podman", "docker-registry", "runc", "conmon", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "the layer store mounts FUSE and podman runs rootful: needs root")
	}
	reg := startDebianRegistry(t)
	front := newBlobLog(t, reg.Host)
	base, _ := runnableTar(t, 1, staticCat(t))
	top := mergeTar(t, []tar.Header{
		{Name: "app/.wh.version", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/lib/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "app/lib/.wh..wh..opq", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "app/lib/only", Typeflag: tar.TypeReg, Mode: 0o644},
		{Name: "etc/os-release", Typeflag: tar.TypeReg, Mode: 0o644},
	}, []string{"", "", "", "the only file\n", "ID=top\n"})
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := ociimport.Import(ctx, pusher, writeLayout(t, [][]byte{base, top}), "merge", "ml:v1"); err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/interop/ml:v1"
	r, _ := imageref.Parse(ref)
	dest, err := push.NewDestination(r, registry.New(registry.WithTLSVerify(false)), pusher.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := push.Push(ctx, pusher, "ml:v1", dest)
	if err != nil {
		t.Fatal(err)
	}
	base2 := t.TempDir()
	// Per-layer composefs mounts outlive the server (podman's images use them); the test removes
	// them after podman's clean-up.
	t.Cleanup(func() { unmountUnder(t, filepath.Join(base2, "state", "mnt")) })
	mnt := filepath.Join(base2, "als")
	regConf := filepath.Join(base2, "registries.conf")
	os.WriteFile(regConf, []byte(fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\ninsecure = true\n", front.Host, reg.Host)), 0o644)
	srv := startLayerStore(t, "--root", filepath.Join(base2, "store"), "layer-store", "serve", mnt,
		"--state", filepath.Join(base2, "state"), "--registries-conf", regConf, "--diff", mode)
	t.Cleanup(func() { srv.stop(t, syscall.SIGTERM) })
	p := newPodman(t, front.Host)
	addLayerStore(t, p, mnt)
	img := front.Host + "/interop/ml:v1"
	front.take()
	alsPodman(t, p, "pull", "--tls-verify=false", img)
	gets := front.take()
	for _, l := range rep.Layers {
		checkNoLayerGET(t, gets, l.Digest.String(), srv)
	}
	checkAdditionalLayers(t, p, mnt, 2)
	if out := alsPodman(t, p, runArgs(img, "/bin/cat", "/etc/os-release", "/app/lib/only")...); out != "ID=top\nthe only file\n" {
		t.Errorf("the upper layer's files read %q", out)
	}
	for _, gone := range []string{"/app/version", "/app/lib/conf-000.txt"} {
		cmd := exec.Command("podman", runArgs(img, "/bin/cat", gone)...)
		cmd.Env = p.env
		if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "no such file") {
			t.Errorf("%s, hidden by the upper layer, reads %d bytes %q… (%v); want no such file", gone, len(out), out[:min(len(out), 40)], err)
		}
	}
}
