package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// alsServer is a running kura layer-store serve.
type alsServer struct {
	cmd    *exec.Cmd
	mu     sync.Mutex
	stderr bytes.Buffer
}

// startALS starts kura layer-store serve at mnt with state and returns once it serves.
func startALS(t *testing.T, root, mnt, state string, extra ...string) *alsServer {
	t.Helper()
	args := append([]string{"--root", root, "--log-level", "info", "layer-store", "serve", mnt, "--state", state, "--diff", "composefs",
		"--tls-verify=false", "--creds", registrytest.Username + ":" + registrytest.Password}, extra...)
	srv := &alsServer{cmd: exec.Command(lifecycleKura(t), args...)}
	pipe, err := srv.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.cmd.Process.Kill(); srv.cmd.Wait() })
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pipe)
		once := sync.Once{}
		for sc.Scan() {
			srv.mu.Lock()
			srv.stderr.WriteString(sc.Text() + "\n")
			srv.mu.Unlock()
			if strings.Contains(sc.Text(), "layer store serving") {
				once.Do(func() { close(ready) })
			}
		}
		once.Do(func() { close(ready) })
	}()
	<-ready
	if !mountedAt(t, mnt) {
		t.Fatalf("layer store not serving at %s\n%s", mnt, srv.log())
	}
	return srv
}

func (s *alsServer) log() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stderr.String()
}

func (s *alsServer) kill(t *testing.T) {
	t.Helper()
	s.cmd.Process.Signal(syscall.SIGKILL)
	s.cmd.Wait()
}

// mountedAt reports whether something is mounted at dir.
func mountedAt(t *testing.T, dir string) bool {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	_, ok := mountinfo.Top(entries, dir)
	return ok
}

// mountsUnder lists the mount points directly under dir.
func mountsUnder(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if filepath.Dir(e.Point) == dir {
			out = append(out, e.Point)
		}
	}
	return out
}

// TestLayerStorePendingMountAfterKill: kura layer-store serve --lazy answers a lookup with a
// pending layer's mount and is killed (SIGKILL), which leaves that mount. Restarted, it detaches
// it and removes its directory before serving, and a new lookup mounts the pending layer again
// over the new fill service, whose files read right. Killed again, the pull completed apart
// (kura pull --lazy resumes it: a pull complete with its pending mount left, as a kill during
// the grace leaves it), and restarted without --lazy, it detaches that mount too and serves the
// complete layer's mount.
func TestLayerStorePendingMountAfterKill(t *testing.T) {
	needRootCLI(t)
	reg := registrytest.New(t)
	data := make([]byte, 300<<10)
	rand.New(rand.NewSource(29)).Read(data)
	img := imagetest.Chunked(t, tartest.Tar(t, tartest.Bytes("data", data)))
	img.Push(t, reg, "lazy/als", "v1")
	ref := reg.Host + "/lazy/als:v1"
	work := t.TempDir()
	root, mnt, state := filepath.Join(work, "store"), filepath.Join(work, "mnt"), filepath.Join(work, "state")
	pending := filepath.Join(state, "pending")
	t.Cleanup(func() {
		for _, dir := range []string{pending, filepath.Join(state, "mnt")} {
			for _, m := range mountsUnder(t, dir) {
				unix.Unmount(m, unix.MNT_DETACH)
			}
		}
		unix.Unmount(mnt, unix.MNT_DETACH)
	})
	diff := filepath.Join(mnt, base64.StdEncoding.EncodeToString([]byte(ref)), img.Descs[0].Digest.String(), "diff")
	lazyArgs := []string{"--lazy", "--lazy-mode", "fanotify", "--lazy-background-after", "1h"}

	srv := startALS(t, root, mnt, state, lazyArgs...)
	left := lookupDiff(t, srv, diff, pending, data)
	srv.kill(t)
	if !mountedAt(t, left) {
		t.Fatalf("the killed server's pending mount %s is gone already: the test shows nothing", left)
	}

	srv = startALS(t, root, mnt, state, lazyArgs...)
	checkNoPendingMounts(t, srv, pending)
	if again := lookupDiff(t, srv, diff, pending, data); again != left {
		t.Fatalf("pending layer mounted again at %s, was %s", again, left)
	}
	srv.kill(t)

	pull := exec.Command(lifecycleKura(t), "--root", root, "pull", "--lazy", "docker://"+ref, "--tls-verify=false",
		"--creds", registrytest.Username+":"+registrytest.Password, "--background-after", "1ms")
	if out, err := pull.CombinedOutput(); err != nil {
		t.Fatalf("kura pull --lazy completing the pending pull: %v\n%s", err, out)
	}
	if !mountedAt(t, left) {
		t.Fatalf("the pending mount %s went with the pull's completion: the test shows nothing", left)
	}
	srv = startALS(t, root, mnt, state)
	checkNoPendingMounts(t, srv, pending)
	if complete := lookupDiff(t, srv, diff, filepath.Join(state, "mnt"), data); complete == left {
		t.Fatalf("the complete layer is served at the pending mount %s", left)
	}
	srv.cmd.Process.Signal(syscall.SIGTERM)
	srv.cmd.Wait()
}

// lookupDiff resolves diff through the layer store (a lookup, then the readlink): it must be a
// mount under under whose data file reads right.
func lookupDiff(t *testing.T, srv *alsServer, diff, under string, data []byte) string {
	t.Helper()
	target, err := os.Readlink(diff)
	if err != nil {
		t.Fatalf("readlink %s: %v\n%s", diff, err, srv.log())
	}
	if filepath.Dir(target) != under || !mountedAt(t, target) {
		t.Fatalf("diff is %s, want a mount under %s\n%s", target, under, srv.log())
	}
	if got, err := readWithin(filepath.Join(target, "data"), time.Minute); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("data through %s: %d of %d bytes, %v", target, len(got), len(data), err)
	}
	return target
}

// readWithin reads path, failing past limit rather than hanging the test on a broken fill.
func readWithin(path string, limit time.Duration) ([]byte, error) {
	type result struct {
		b   []byte
		err error
	}
	ch := make(chan result, 1)
	go func() { b, err := os.ReadFile(path); ch <- result{b, err} }()
	select {
	case r := <-ch:
		return r.b, r.err
	case <-time.After(limit):
		return nil, os.ErrDeadlineExceeded
	}
}

// checkNoPendingMounts: nothing is mounted under pending any more, and no directory is left.
func checkNoPendingMounts(t *testing.T, srv *alsServer, pending string) {
	t.Helper()
	if left := mountsUnder(t, pending); len(left) > 0 {
		t.Fatalf("pending mounts left after the restart: %v\n%s", left, srv.log())
	}
	if ents, _ := os.ReadDir(pending); len(ents) > 0 {
		t.Fatalf("%d entries left in %s after the restart", len(ents), pending)
	}
}
