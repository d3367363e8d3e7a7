package interop

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
)

// TestLayerStoreLazyPodman: kura layer-store serve --lazy (each fill service) under Debian's
// podman 4.3.1, the background fetch held back: podman pulls through the layer store without
// fetching a layer blob, the layer's diff is the pending layer's mount and its info carries the
// layer's digests and sizes; podman runs the image's static cat on a file of the layer and gets
// the right bytes while the pull is still pending (both files fetched on first access). Then
// the server is killed (SIGKILL) mid-pull: podman fails cleanly or reads the right bytes, never
// wrong ones, and kura fsck is clean. Restarted without the hold, the server resumes the pull,
// which completes with the layer's DiffID; diff now points at the complete layer's mount, new
// containers read the right bytes, blob hashes to the layer digest, kura gc keeps what podman
// uses, and kura fsck is clean. A container running across the kill reads the right bytes or
// gets an error; under fanotify it reads the right bytes again once the server is back (the
// placeholders are the same files, filled by the new server), under FUSE it keeps failing (its
// overlay holds the killed server's FUSE mount).
func TestLayerStoreLazyPodman(t *testing.T) {
	for _, mode := range []string{"fuse", "fanotify"} {
		t.Run(mode, func(t *testing.T) { testLayerStoreLazy(t, mode) })
	}
}

func testLayerStoreLazy(t *testing.T, mode string) {
	lazyArgs := []string{"--lazy", "--lazy-mode", mode}
	e := newALSEnv(t, "composefs", append(lazyArgs, "--lazy-background-after", "1h")...)
	// A failing test leaves pending layer mounts: detach them so that the directory goes.
	t.Cleanup(func() { unmountUnder(t, filepath.Join(argAfter(t, e.serveArgs, "--state"), "pending")) })
	v1 := e.front.Host + "/interop/ls:v1"
	diffID := digest.FromBytes(e.tars[1])
	files := bigFiles(t, e.tars[1])
	name, want := files[0].name, files[0].data
	alsPodman(t, e.p, "pull", "--tls-verify=false", v1)
	if !strings.Contains(e.srv.log(), "pending layer mounted") {
		t.Fatalf("the layer was not served from a lazy pull\n%s", e.srv.log())
	}
	checkAdditionalLayers(t, e.p, e.mnt, 1)
	layerDir := filepath.Join(e.mnt, base64.StdEncoding.EncodeToString([]byte(v1)), e.layers[1])
	checkLazyInfo(t, layerDir, e.layers[1], e.blobSizes[1], diffID, int64(len(e.tars[1])))
	checkDiffUnder(t, layerDir, "pending")
	if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/"+name)...); got != string(want) {
		t.Fatalf("podman run of the pending image printed %d bytes; want /%s's %d", len(got), name, len(want))
	}
	checkBlob(t, e.mnt, v1, e.layers[1]) // fetched whole by Kura, verified: the layer digest
	root := e.root
	if pendingPulls(t, root) == 0 || hasLayerRecord(root, diffID) {
		t.Fatalf("the layer was complete when the container read it: not a lazy read\n%s", e.srv.log())
	}

	// A container running across the kill and the completion.
	alsPodman(t, e.p, "run", "-d", "-i", "--name", "lazy-running", "--network", "none", "--ulimit", "nofile=1024:1024",
		"--ulimit", "nproc=4096:4096", v1, "/bin/cat", "/dev/stdin")
	t.Cleanup(func() { exec.Command("podman", "rm", "-f", "lazy-running").Run() })
	if got := alsPodman(t, e.p, "exec", "lazy-running", "/bin/cat", "/"+name); got != string(want) {
		t.Fatalf("podman exec in the running container printed %d bytes; want %d", len(got), len(want))
	}

	// Killed mid-pull: podman fails cleanly (the diff does not resolve) or reads the right
	// bytes; the running container reads the right bytes or gets an error, never zeros.
	e.srv.stop(t, syscall.SIGKILL)
	runUntil(t, e.p, runArgs(v1, "/bin/cat", "/"+name), string(want))
	for _, f := range files[:2] {
		runUntil(t, e.p, []string{"exec", "lazy-running", "/bin/cat", "/" + f.name}, string(f.data))
	}
	kuraFsck(t, root)

	// Restarted with the hold: the pull is still pending, and a new container runs on the
	// pending mount the killed server left (fanotify: reused, its placeholders' directories marked again;
	// FUSE: made again over the new server's FUSE mount).
	e.srv = startLayerStore(t, e.serveArgs...)
	if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/"+files[1].name)...); got != string(files[1].data) {
		t.Fatalf("podman run on the pending layer after a restart printed %d bytes; want %d", len(got), len(files[1].data))
	}
	if pendingPulls(t, root) == 0 || hasLayerRecord(root, diffID) {
		t.Fatalf("the layer was complete after the restart with the hold\n%s", e.srv.log())
	}
	checkDiffUnder(t, layerDir, "pending")
	e.srv.stop(t, syscall.SIGTERM)

	e.srv = startLayerStore(t, slicesWithout(e.serveArgs, "--lazy-background-after", "1h")...)
	waitPulled(t, root, e.srv)
	if !hasLayerRecord(root, diffID) {
		t.Fatalf("the lazy pull completed without recording layer %s\n%s", diffID, e.srv.log())
	}
	checkDiffUnder(t, layerDir, "mnt")
	if mode == "fanotify" {
		if got := alsPodman(t, e.p, "exec", "lazy-running", "/bin/cat", "/"+files[1].name); got != string(files[1].data) {
			t.Fatalf("the container running across the kill read %d bytes once the pull completed; want %d", len(got), len(files[1].data))
		}
	} else {
		runUntil(t, e.p, []string{"exec", "lazy-running", "/bin/cat", "/" + files[1].name}, string(files[1].data))
	}
	if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/"+name, "/etc/os-release")...); got != string(want)+e.releases[1] {
		t.Fatalf("podman run on the complete layer printed %d bytes; want %d", len(got), len(want)+len(e.releases[1]))
	}
	checkBlob(t, e.mnt, v1, e.layers[1])
	kuraGC(t, root)
	if !hasLayerRecord(root, diffID) {
		t.Fatalf("kura gc freed the layer podman's image uses")
	}
	if got := alsPodman(t, e.p, runArgs(v1, "/bin/cat", "/"+name)...); got != string(want) {
		t.Fatalf("podman run after kura gc printed %d bytes; want %d", len(got), len(want))
	}
	checkNoLayerGET(t, e.front.take(), e.layers[1], e.srv)
	kuraFsck(t, root)
	checkOffline(t, e, v1, "/"+name, string(want))
	alsPodman(t, e.p, "rm", "-f", "lazy-running")
	alsPodman(t, e.p, "rmi", v1)
	killDuringLazyLookup(t, e)
}

// checkOffline restarts the server with the registry unreachable and the layer's mount gone
// (a reboot): podman run of the image it completed reads the right bytes, served from the
// store. The server is then restarted as before.
func checkOffline(t *testing.T, e *alsEnv, ref, file, want string) {
	t.Helper()
	e.srv.stop(t, syscall.SIGTERM)
	state := argAfter(t, e.serveArgs, "--state")
	unmountUnder(t, filepath.Join(state, "mnt"))
	offline := filepath.Join(t.TempDir(), "registries.conf")
	host := strings.Split(ref, "/")[0]
	if err := os.WriteFile(offline, []byte("[[registry]]\nprefix = \""+host+"\"\nlocation = \"127.0.0.1:1\"\ninsecure = true\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := slicesWithout(e.serveArgs, "--registries-conf", argAfter(t, e.serveArgs, "--registries-conf"))
	e.srv = startLayerStore(t, append(slicesWithout(args, "--lazy-background-after", "1h"), "--registries-conf", offline)...)
	if got := alsPodman(t, e.p, runArgs(ref, "/bin/cat", file)...); got != want {
		t.Fatalf("podman run with the registry unreachable printed %d bytes; want %d\n%s", len(got), len(want), e.srv.log())
	}
	if !strings.Contains(e.srv.log(), "serving the stored image") {
		t.Fatalf("the offline server did not serve the stored image\n%s", e.srv.log())
	}
	e.srv.stop(t, syscall.SIGTERM)
	e.srv = startLayerStore(t, slicesWithout(e.serveArgs, "--lazy-background-after", "1h")...)
}

// argAfter is the value following flag in args.
func argAfter(t *testing.T, args []string, flag string) string {
	t.Helper()
	for i, a := range args[:len(args)-1] {
		if a == flag {
			return args[i+1]
		}
	}
	t.Fatalf("no %s in %v", flag, args)
	return ""
}

// killDuringLazyLookup kills the server (SIGKILL) as a podman pull's lookup begins a lazy pull:
// podman completes (pulling the layer itself) or fails, never hangs; the store is fsck-clean; a
// restarted server resumes what was recorded, and serves the image.
func killDuringLazyLookup(t *testing.T, e *alsEnv) {
	t.Helper()
	v2 := e.front.Host + "/interop/ls:v2"
	out, err := pullKillingServer(t, e, v2, "lazy pull served")
	t.Logf("podman pull with the server killed as its lazy pull began: %v\n%s", err, out)
	kuraFsck(t, e.root)
	if err == nil { // pulled by podman itself: its own layer
		if got := alsPodman(t, e.p, runArgs(v2, "/bin/cat", "/etc/os-release")...); got != e.releases[2] {
			t.Fatalf("podman run of the image pulled while the server died printed %q; want %q", got, e.releases[2])
		}
		alsPodman(t, e.p, "rmi", v2)
	}
	e.front.take()
	e.srv = startLayerStore(t, slicesWithout(e.serveArgs, "--lazy-background-after", "1h")...)
	alsPodman(t, e.p, "pull", "--tls-verify=false", v2)
	checkNoLayerGET(t, e.front.take(), e.layers[2], e.srv)
	if got := alsPodman(t, e.p, runArgs(v2, "/bin/cat", "/etc/os-release")...); got != e.releases[2] {
		t.Fatalf("podman run of v2 from the restarted server printed %q; want %q", got, e.releases[2])
	}
	waitPulled(t, e.root, e.srv)
	kuraFsck(t, e.root)
}

// tarFile is a regular file of a tar.
type tarFile struct {
	name string
	data []byte
}

// bigFiles are the regular files of a tar other than bin/cat that a composefs image does not
// inline (the pending layer holds placeholders for them), largest first; at least two.
func bigFiles(t *testing.T, b []byte) []tarFile {
	t.Helper()
	var out []tarFile
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg && h.Name != "bin/cat" && h.Size > 64 {
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, tarFile{h.Name, data})
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i].data) > len(out[j].data) })
	if len(out) < 2 {
		t.Fatalf("the image has %d files larger than composefs inlines; want 2", len(out))
	}
	return out
}

// checkLazyInfo checks the info of a layer served before it is complete: what
// containers/storage records of it.
func checkLazyInfo(t *testing.T, layerDir, layer string, size int64, diffID digest.Digest, tarSize int64) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(layerDir, "info"))
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		CompressedDigest string `json:"compressed-diff-digest"`
		CompressedSize   int64  `json:"compressed-size"`
		DiffDigest       string `json:"diff-digest"`
		DiffSize         int64  `json:"diff-size"`
		Compression      int    `json:"compression"`
	}
	if err := json.Unmarshal(b, &info); err != nil {
		t.Fatal(err)
	}
	if info.CompressedDigest != layer || info.CompressedSize != size || info.DiffDigest != diffID.String() || info.DiffSize != tarSize || info.Compression != 4 {
		t.Fatalf("info of the pending layer: %s; want %s, %d bytes, DiffID %s, %d bytes of tar, zstd", b, layer, size, diffID, tarSize)
	}
}

// checkDiffUnder checks that the layer's diff resolves into the server's state directory dir
// (pending: a pending layer's mount; mnt: a complete layer's).
func checkDiffUnder(t *testing.T, layerDir, dir string) {
	t.Helper()
	target, err := os.Readlink(filepath.Join(layerDir, "diff"))
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Base(filepath.Dir(target)) != dir {
		t.Fatalf("diff points at %s; want a directory under %s/", target, dir)
	}
}

// runUntil runs podman (a container, an exec) while the layer store is killed or has just
// restarted: it must fail, or print want or a short part of it (a fanotify placeholder not
// filled is empty: a read past its length is a short read); never other bytes.
func runUntil(t *testing.T, p *podmanEnv, args []string, want string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = p.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if ctx.Err() != nil {
		t.Fatalf("podman run hung with the layer store killed")
	}
	if !strings.HasPrefix(want, string(out)) {
		t.Fatalf("podman %s printed %d other bytes", strings.Join(args, " "), len(out))
	}
	t.Logf("podman %s: %d of %d bytes, %v %s", strings.Join(args, " "), len(out), len(want), err, stderr.String())
}

// waitPulled waits until the store at root has no pending lazy pull and the server says one
// completed.
func waitPulled(t *testing.T, root string, srv *layerStoreServer) {
	t.Helper()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(3 * time.Minute)
	for pendingPulls(t, root) > 0 || !strings.Contains(srv.log(), "lazy pull complete") {
		select {
		case <-deadline:
			t.Fatalf("the lazy pull did not complete\n%s", srv.log())
		case <-tick.C:
		}
	}
}

func hasLayerRecord(root string, diffID digest.Digest) bool {
	_, err := os.Stat(filepath.Join(root, "layers", diffID.Encoded(), "layer.json"))
	return err == nil
}
