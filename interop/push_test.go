package interop

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"go.podman.io/storage/pkg/chunked/toc"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/push"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarimage"
	"github.com/kura-oci/kura/tarstream"
)

// debianRegistry is a Debian docker-registry (distribution 2.8) on loopback with a filesystem
// root, behind a reverse proxy that counts the blob bytes it serves.
type debianRegistry struct {
	Host string // the proxy, what clients use

	blobBytes atomic.Int64
	mu        sync.Mutex
	ranges    []string
}

func startDebianRegistry(t *testing.T) *debianRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		testkit.Skip(t, "docker-registry (Debian package docker-registry) is not installed")
	}
	root := t.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	conf := fmt.Sprintf("version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: true\nstorage:\n  filesystem:\n    rootdirectory: %s\n  delete:\n    enabled: true\nhttp:\n  addr: %s\n",
		filepath.Join(root, "data"), addr)
	confPath := filepath.Join(root, "config.yml")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	cmd := exec.Command(bin, "serve", confPath)
	cmd.Stdout, cmd.Stderr = &logBuf, &logBuf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		<-exited
	})
	// Wait for /v2/ to answer (the process needs a moment to listen).
	client := &http.Client{Timeout: time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for i := 0; ; i++ {
		resp, err := client.Get("http://" + addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			break
		}
		if i == 400 {
			t.Fatalf("docker-registry did not come up: %v\n%s", err, logBuf.String())
		}
		select {
		case err := <-exited:
			t.Fatalf("docker-registry exited: %v\n%s", err, logBuf.String())
		case <-tick.C:
		}
	}

	r := &debianRegistry{}
	target, _ := url.Parse("http://" + addr)
	proxy := httputil.NewSingleHostReverseProxy(target)
	proxy.ModifyResponse = func(resp *http.Response) error {
		if resp.Request.Method == http.MethodGet && strings.Contains(resp.Request.URL.Path, "/blobs/sha256:") {
			r.mu.Lock()
			r.ranges = append(r.ranges, resp.Request.Header.Get("Range"))
			r.mu.Unlock()
			resp.Body = &countingBody{ReadCloser: resp.Body, n: &r.blobBytes}
		}
		return nil
	}
	srv := httptest.NewServer(proxy)
	t.Cleanup(srv.Close)
	r.Host = srv.Listener.Addr().String()
	return r
}

// reset zeroes the blob byte count and returns what it was, with the Range headers seen.
func (r *debianRegistry) reset() (int64, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.ranges
	r.ranges = nil
	return r.blobBytes.Swap(0), rs
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// appTar is a layer of about 6 MiB in 150 files; version changes two small files and a few bytes
// of one large file, so that a partial pull of it needs little.
func appTar(t testing.TB, version int) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(42, 43))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	add := func(h *tar.Header, data []byte) {
		h.ModTime, h.Size = mt, int64(len(data))
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(data); err != nil {
			t.Fatal(err)
		}
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		var sb strings.Builder
		for sb.Len() < n {
			fmt.Fprintf(&sb, "config line %d = value %d\n", rng.IntN(100000), rng.IntN(1000))
		}
		return []byte(sb.String()[:n])
	}
	add(&tar.Header{Name: "app/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	add(&tar.Header{Name: "app/lib/", Typeflag: tar.TypeDir, Mode: 0o755}, nil)
	for i := range 140 {
		body := text(500 + rng.IntN(20000))
		if version > 0 && (i == 7 || i == 99) {
			body = append(body, fmt.Sprintf("changed in version %d\n", version)...)
		}
		add(&tar.Header{Name: fmt.Sprintf("app/lib/conf-%03d.txt", i), Typeflag: tar.TypeReg, Mode: 0o644}, body)
	}
	for i := range 4 {
		big := append(random(600000), text(400000)...)
		if version > 0 && i == 2 {
			copy(big[300000:], fmt.Sprintf("patched in version %d", version))
		}
		add(&tar.Header{Name: fmt.Sprintf("app/lib/big-%d.so", i), Typeflag: tar.TypeReg, Mode: 0o755}, big)
	}
	add(&tar.Header{Name: "app/current", Typeflag: tar.TypeSymlink, Linkname: "lib/big-0.so", Mode: 0o777}, nil)
	add(&tar.Header{Name: "app/version", Typeflag: tar.TypeReg, Mode: 0o644}, []byte(fmt.Sprintf("%d\n", version)))
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// pushFromStore imports tarBytes into a store as name and pushes it to ref.
func pushFromStore(t *testing.T, s *store.Store, c *registry.Client, tarBytes []byte, name, ref string) *push.Report {
	t.Helper()
	ctx := context.Background()
	if _, err := tarimage.Import(ctx, s, bytes.NewReader(tarBytes), name, tarimage.Options{Created: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}); err != nil {
		t.Fatal(err)
	}
	r, err := imageref.Parse(ref)
	if err != nil {
		t.Fatal(err)
	}
	dest, err := push.NewDestination(r, c, s.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	rep, err := push.Push(ctx, s, name, dest)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

// checkTreeAgainstTar compares the regular files and symlinks of a tar with a directory.
func checkTreeAgainstTar(t *testing.T, dir string, tarBytes []byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	files := 0
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeReg:
			want, _ := io.ReadAll(tr)
			got, err := os.ReadFile(p)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s: %d bytes, %v; want %d bytes", h.Name, len(got), err, len(want))
			}
			files++
		case tar.TypeSymlink:
			if got, err := os.Readlink(p); err != nil || got != h.Linkname {
				t.Errorf("%s: link %q, %v; want %q", h.Name, got, err, h.Linkname)
			}
		}
	}
	t.Logf("%d files match", files)
}

func requireTools(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() {
		testkit.Skip(t, "interop with real peers is slow; skipped under -short")
	}
	for _, tool := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Skip(t, "%s is not installed", tool)
		}
	}
}

func run(t *testing.T, env []string, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, stderr.String())
	}
	return string(out)
}

// TestPushSkopeoReads: skopeo 1.9 copies a kura-pushed zstd:chunked image out of a Debian
// docker-registry; every layer's uncompressed tar hashes to its DiffID, which is the pushed tar's,
// and the reference's toc package reads the annotations.
func TestPushSkopeoReads(t *testing.T) {
	requireTools(t, "skopeo", "docker-registry")
	reg := startDebianRegistry(t)
	s, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	c := registry.New(registry.WithTLSVerify(false))
	tb := appTar(t, 0)
	ref := reg.Host + "/interop/skopeo:v1"
	pushFromStore(t, s, c, tb, "app:v1", ref)

	dir := t.TempDir()
	run(t, os.Environ(), "skopeo", "copy", "--src-tls-verify=false", "docker://"+ref, "oci:"+dir+":v1")
	l := ocilayout.Layout{Dir: dir}
	img, err := l.Resolve("v1")
	if err != nil {
		t.Fatal(err)
	}
	if len(img.Manifest.Layers) != 1 || img.Config.RootFS.DiffIDs[0] != digest.FromBytes(tb) {
		t.Fatalf("skopeo's copy: %d layers, diff_ids %v", len(img.Manifest.Layers), img.Config.RootFS.DiffIDs)
	}
	for i, d := range img.Manifest.Layers {
		rc, err := l.Verified(d)
		if err != nil {
			t.Fatal(err)
		}
		dr, err := tarstream.Decompress(rc)
		if err != nil {
			t.Fatal(err)
		}
		h := digest.SHA256.Digester()
		if _, err := io.Copy(h.Hash(), dr); err != nil {
			t.Fatal(err)
		}
		rc.Close()
		if h.Digest() != img.Config.RootFS.DiffIDs[i] {
			t.Errorf("layer %d: tar hashes to %s, diff_id %s", i, h.Digest(), img.Config.RootFS.DiffIDs[i])
		}
		// skopeo kept the blob and its annotations; the reference reads the TOC digest from them.
		d2, err := toc.GetTOCDigest(d.Annotations)
		if err != nil || d2 == nil || d2.String() != d.Annotations[chunked.AnnotationTOCDigest] {
			t.Errorf("layer %d: reference GetTOCDigest = %v, %v (annotations %v)", i, d2, err, d.Annotations)
		}
	}
}

// podmanEnv is a private podman: its own root, runroot and configuration, partial pulls on.
type podmanEnv struct {
	root, runroot string
	env           []string
}

func newPodman(t *testing.T, registryHost string) *podmanEnv {
	t.Helper()
	// overlay needs a file system that is not itself overlay: /var/tmp rather than a tmpfs /tmp.
	dir, err := os.MkdirTemp("/var/tmp", "kura-interop-podman-")
	if err != nil {
		t.Fatal(err)
	}
	p := &podmanEnv{root: filepath.Join(dir, "root"), runroot: filepath.Join(dir, "runroot")}
	files := map[string]string{
		"storage.conf":    fmt.Sprintf("[storage]\ndriver = \"overlay\"\ngraphroot = %q\nrunroot = %q\n\n[storage.options]\npull_options = {enable_partial_images = \"true\", use_hard_links = \"false\"}\n", p.root, p.runroot),
		"registries.conf": fmt.Sprintf("unqualified-search-registries = []\n\n[[registry]]\nlocation = %q\ninsecure = true\n", registryHost),
		"containers.conf": fmt.Sprintf("[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\ntmp_dir = %q\n", filepath.Join(dir, "tmp")),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	p.env = append(os.Environ(),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"))
	t.Cleanup(func() {
		// Unmount everything podman mounted, then remove its store.
		exec.Command("podman", p.args("image", "unmount", "--all", "--force")...).Run()
		cmd := exec.Command("podman", p.args("rmi", "--all", "--force")...)
		cmd.Env = p.env
		cmd.Run()
		exec.Command("umount", "-R", filepath.Join(p.root, "overlay")).Run()
		os.RemoveAll(dir)
	})
	return p
}

func (p *podmanEnv) args(a ...string) []string {
	return append([]string{"--root", p.root, "--runroot", p.runroot, "--storage-driver", "overlay"}, a...)
}

func (p *podmanEnv) run(t *testing.T, a ...string) string {
	t.Helper()
	return run(t, p.env, "podman", p.args(a...)...)
}

// TestPushPodmanPartialPull: podman 4.3.1 pulls a kura-pushed zstd:chunked image from a Debian
// docker-registry and its files match the pushed tar; then it pulls version 2 (two small files
// and a few bytes of a large one changed) with ranged requests, fetching far less than the blob.
func TestPushPodmanPartialPull(t *testing.T) {
	requireTools(t, "podman", "docker-registry")
	reg := startDebianRegistry(t)
	s, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	c := registry.New(registry.WithTLSVerify(false))
	v1, v2 := appTar(t, 0), appTar(t, 1)
	pushFromStore(t, s, c, v1, "app:v1", reg.Host+"/interop/app:v1")
	rep2 := pushFromStore(t, s, c, v2, "app:v2", reg.Host+"/interop/app:v2")

	p := newPodman(t, reg.Host)
	reg.reset()
	p.run(t, "pull", "--tls-verify=false", reg.Host+"/interop/app:v1")
	full, _ := reg.reset()
	mnt := strings.TrimSpace(p.run(t, "image", "mount", reg.Host+"/interop/app:v1"))
	checkTreeAgainstTar(t, mnt, v1)
	p.run(t, "image", "unmount", reg.Host+"/interop/app:v1")

	out := p.run(t, "pull", "--tls-verify=false", reg.Host+"/interop/app:v2")
	served, ranges := reg.reset()
	blob := rep2.Layers[0].Size
	ranged := 0
	for _, r := range ranges {
		if r != "" {
			ranged++
		}
	}
	t.Logf("v1 pull: %d blob bytes served; v2 pull: %d of %d blob bytes served (%.1f%%), %d of %d blob requests ranged",
		full, served, blob, 100*float64(served)/float64(blob), ranged, len(ranges))
	if ranged == 0 || served > blob/4 {
		t.Errorf("v2 was not pulled partially: %d of %d bytes, %d ranged requests\n%s", served, blob, ranged, out)
	}
	mnt = strings.TrimSpace(p.run(t, "image", "mount", reg.Host+"/interop/app:v2"))
	checkTreeAgainstTar(t, mnt, v2)
	p.run(t, "image", "unmount", reg.Host+"/interop/app:v2")
}
