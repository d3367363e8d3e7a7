package interop

import (
	"archive/tar"
	"encoding/hex"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/store"
)

// bulkTar is a layer of n files of size bytes under bulk/, each of its own content: a commit
// long enough to be killed in the middle of. It returns the files' paths in the container and
// their contents concatenated in that order.
func bulkTar(t *testing.T, n, size int) ([]byte, []string, string) {
	t.Helper()
	rng := rand.New(rand.NewPCG(16, 2))
	hdrs := []tar.Header{{Name: "bulk/", Typeflag: tar.TypeDir, Mode: 0o755}}
	data := []string{""}
	var names []string
	var all strings.Builder
	buf := make([]byte, size/2)
	for i := range n {
		for j := range buf {
			buf[j] = byte(rng.Uint32())
		}
		body := hex.EncodeToString(buf)
		name := fmt.Sprintf("bulk/f%05d", i)
		hdrs, data = append(hdrs, tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o644}), append(data, body)
		names = append(names, "/"+name)
		all.WriteString(body)
	}
	return mergeTar(t, hdrs, data), names, all.String()
}

// TestSnapshotterKilledDuringCommit: the plain path's commit killed with SIGKILL while it
// ingests the upper directory into Kura's store. containerd's pull fails; restarted, the
// snapshotter has committed nothing of it (no half-recorded snapshot is served), `kura fsck`
// is clean, and the next pull completes with both layers in the store. Then containerd is
// restarted under a running container on those layers: the container keeps reading the
// image's bytes.
func TestSnapshotterKilledDuringCommit(t *testing.T) {
	requireTools(t, "containerd", "ctr", "runc", "docker-registry", "go")
	if os.Geteuid() != 0 {
		testkit.Skip(t, "containerd and overlay mounts need root")
	}
	reg := startDebianRegistry(t)
	bulk, names, content := bulkTar(t, 3000, 4096)
	runnable, release := runnableTar(t, 1, staticCat(t))
	pusher, err := store.Open(t.TempDir(), store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	ref := reg.Host + "/interop/bulk:v1"
	pushLayers(t, pusher, [][]byte{bulk, runnable}, ref)
	base, err := os.MkdirTemp("/var/tmp", "kura-interop-snap-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	t.Cleanup(func() { unmountUnder(t, filepath.Join(base, "snapshotter", "layers")) }) // after containerd
	e := startContainerd(t, base, "--no-remote")
	storeRoot := filepath.Join(base, "store")

	killDuringCommit(t, e, ref)
	e.snap = startDaemon(t, exec.Command(testkit.Kura(t), e.snapArgs...), "client connected")
	kuraFsck(t, storeRoot)
	if out := e.ctr(t, "snapshots", "--snapshotter", "kura", "ls"); strings.Contains(out, "Committed") {
		t.Fatalf("a snapshot is committed after the killed commit:\n%s", out)
	}
	e.ctr(t, "image", "pull", "--plain-http", "--snapshotter", "kura", ref)
	if out := e.ctr(t, "snapshots", "--snapshotter", "kura", "ls"); strings.Count(out, "Committed") != 2 {
		t.Fatalf("after the next pull, want two committed snapshots:\n%s", out)
	}
	if n := strings.Count(e.snap.log(), "commit ingested into the store"); n != 2 {
		t.Fatalf("%d commits ingested into the store after the restart, want 2:\n%s", n, e.snap.log())
	}
	args := append([]string{"run", "--rm", "--snapshotter", "kura", ref, "bulk-after-kill", "/bin/cat", "/etc/os-release"}, names...)
	if out := e.ctr(t, args...); out != release+content {
		t.Fatalf("the container read %d bytes that differ from the image's %d", len(out), len(release)+len(content))
	}
	checkRestartUnderContainer(t, e, ref, names, content)
	kuraFsck(t, storeRoot)
}

// killDuringCommit starts a pull of ref (plain path) and kills the snapshotter with SIGKILL
// when it starts ingesting a commit; it checks the pull fails and the ingest did not finish.
func killDuringCommit(t *testing.T, e *ctrEnv, ref string) {
	t.Helper()
	ingesting := e.snap.when("ingesting a commit into the store")
	type result struct {
		out []byte
		err error
	}
	done := make(chan result, 1)
	go func() {
		out, err := exec.Command("ctr", "--address", e.sock, "image", "pull", "--plain-http", "--snapshotter", "kura", ref).CombinedOutput()
		done <- result{out, err}
	}()
	select {
	case <-ingesting:
	case r := <-done:
		t.Fatalf("pull ended (%v) before a commit\n%s\n%s", r.err, r.out, e.snap.log())
	}
	e.snap.stop(t, syscall.SIGKILL)
	if strings.Contains(e.snap.log(), "commit ingested into the store") {
		t.Fatalf("the commit finished before the kill (the drill needs a longer ingest):\n%s", e.snap.log())
	}
	if r := <-done; r.err == nil {
		t.Fatalf("pull succeeded though the snapshotter was killed during its commit:\n%s", r.out)
	} else {
		t.Logf("pull with the snapshotter killed during a commit: %v\n%s", r.err, r.out)
	}
}

// checkRestartUnderContainer runs a container of ref (blocked reading a FIFO), restarts
// containerd under it, and checks an exec in it reads the files names with content.
func checkRestartUnderContainer(t *testing.T, e *ctrEnv, ref string, names []string, content string) {
	t.Helper()
	fifo := filepath.Join(t.TempDir(), "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	id := fmt.Sprintf("kura-interop-commit-%d", os.Getpid()) // runc's state directory is shared
	e.ctr(t, "run", "-d", "--snapshotter", "kura", "--mount", "type=bind,src="+fifo+",dst=/fifo,options=rbind:ro", ref, id, "/bin/cat", "/fifo")
	t.Cleanup(func() { // on failure: no container outlives the test (before containerd stops)
		exec.Command("ctr", "--address", e.sock, "task", "delete", "--force", id).Run()
	})
	if err := e.ctd.stop(t, syscall.SIGTERM); err != nil {
		t.Fatalf("containerd on SIGTERM: %v", err)
	}
	e.ctd = startDaemon(t, exec.Command("containerd", e.ctd.cmd.Args[1:]...), "containerd successfully booted")
	if out := e.ctr(t, append([]string{"task", "exec", "--exec-id", "check", id, "/bin/cat"}, names...)...); out != content {
		t.Fatalf("exec in the running container after containerd's restart read %d bytes that differ from the image's %d", len(out), len(content))
	}
	e.ctr(t, "task", "delete", "--force", id)
	e.ctr(t, "container", "rm", id)
}
