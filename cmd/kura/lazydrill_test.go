package main

import (
	"bufio"
	"bytes"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestLazyDrillFillerKilledDuringStartup: a program of the image starts from the mount (its
// binary filled on exec) and is stopped in its start-up, before it reads its data file; the
// filler (kura pull --lazy) is killed with SIGKILL there. The program's read of the data file
// is short, never zeros; a program whose binary is still a placeholder fails to start; fsck is
// clean. A restarted kura pull --lazy serves both, and completes the image.
func TestLazyDrillFillerKilledDuringStartup(t *testing.T) {
	needRootCLI(t)
	reg := registrytest.New(t)
	data := make([]byte, 300<<10)
	rand.New(rand.NewSource(1717)).Read(data)
	catBin, err := os.ReadFile("/usr/bin/cat")
	if err != nil {
		t.Fatal(err)
	}
	echoBin, err := os.ReadFile("/usr/bin/echo")
	if err != nil {
		t.Fatal(err)
	}
	// echo in a directory of its own: read-ahead of cat's fill would fetch a neighbour.
	imagetest.Chunked(t, tartest.Tar(t, tartest.Bytes("data", data), tartest.Bytes("cat", catBin).Mode(0o755),
		tartest.Dir("sbin"), tartest.Bytes("sbin/echo", echoBin).Mode(0o755))).Push(t, reg, "lazy/startup", "v1")
	ref := "docker://" + reg.Host + "/lazy/startup:v1"
	root, scratch := filepath.Join(t.TempDir(), "store"), t.TempDir()
	target := mountTarget(t, scratch, "mnt")

	first := startLazyPull(t, root, ref, "--background-after", "1h")
	kuraOK(t, root, "mount", "app", target)
	t.Cleanup(func() { kuraRun(t, root, "umount", target) })
	out := startupThenKill(t, filepath.Join(target, "cat"), filepath.Join(target, "data"), first)
	if len(out) != 0 {
		t.Fatalf("the program read %d bytes of a placeholder with its filler killed (zeros: %v); want a short read",
			len(out), bytes.Count(out, []byte{0}) == len(out))
	}
	got, err := runFromMount(filepath.Join(target, "sbin/echo"), "hi").Output()
	if err == nil || len(got) != 0 {
		t.Fatalf("a program whose binary is an unfilled placeholder ran: %q, %v", got, err)
	}
	t.Logf("a program whose binary is an unfilled placeholder, with no filler: %v", err)
	kuraOK(t, root, "fsck")

	second := startLazyPull(t, root, ref, "--background-after", "1h")
	if got, err := runFromMount(filepath.Join(target, "cat"), filepath.Join(target, "data")).Output(); err != nil || !bytes.Equal(got, data) {
		t.Fatalf("after restart: %d of %d bytes, %v", len(got), len(data), err)
	}
	if got, err := runFromMount(filepath.Join(target, "sbin/echo"), "hi").Output(); err != nil || string(got) != "hi\n" {
		t.Fatalf("after restart, echo from the mount: %q, %v", got, err)
	}
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()
	third := startLazyPull(t, root, ref)
	if err := third.Wait(); err != nil {
		t.Fatalf("resumed kura pull --lazy: %v", err)
	}
	kuraOK(t, root, "fsck")
}

// startupThenKill runs `catPath - dataPath` from the mount: cat starts (exec fills its binary)
// and echoes a line of its stdin, which shows it is running and has not opened dataPath yet.
// Then filler is killed (SIGKILL, waited for) and stdin closed: cat goes on to read dataPath.
// It returns what cat printed after the echoed line.
func startupThenKill(t *testing.T, catPath, dataPath string, filler *exec.Cmd) []byte {
	t.Helper()
	cmd := runFromMount(catPath, "-", dataPath)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	io.WriteString(stdin, "started\n")
	r := bufio.NewReader(stdout)
	if line, err := r.ReadString('\n'); line != "started\n" {
		t.Fatalf("the program from the mount did not start: %q, %v", line, err)
	}
	filler.Process.Signal(syscall.SIGKILL)
	filler.Wait()
	stdin.Close()
	rest, _ := io.ReadAll(r)
	cmd.Wait() // cat's exit status on a short read is not the point: its bytes are
	return rest
}
