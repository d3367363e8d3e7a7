package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// startLazyPull starts kura pull --lazy and returns once it says the image is mountable.
func startLazyPull(t *testing.T, root, ref string, extra ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(lifecycleKura(t), append([]string{"--root", root, "pull", "--lazy", ref, "--tls-verify=false",
		"--creds", registrytest.Username + ":" + registrytest.Password, "--name", "app"}, extra...)...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() }) // a test that fails leaves no server behind
	line, err := bufio.NewReader(out).ReadString('\n')
	if !strings.Contains(line, "mountable") {
		cmd.Process.Kill()
		cmd.Wait()
		t.Fatalf("kura pull --lazy said %q (%v)\n%s", line, err, stderr.String())
	}
	go func() { bufio.NewReader(out).WriteTo(new(bytes.Buffer)) }() // drain the rest
	return cmd
}

// runFromMount makes the command that runs the program at path (on a lazily pulled mount)
// from a process of its own, this test binary started again (see init), which execve()s it:
// the test process must not exec it itself. Go's fork-exec (CLONE_VFORK) keeps the forking
// thread in the kernel, counted by the runtime as running, until the child's execve has opened
// the program; that open waits for kura's fill, which fetches from the registry this test
// process serves (registrytest). A garbage collection the registry starts meanwhile stops the
// world and waits for that thread, so the registry never answers and the fill times out (the
// open fails with EIO after 30 s; golang/go#11155). A user's exec is not the registry's
// process. Not env or sh: their execvp runs a file execve refuses (ENOEXEC: an empty
// placeholder) as a shell script, and succeeds.
func runFromMount(path string, args ...string) *exec.Cmd {
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Env = append(os.Environ(), execveEnv+"="+path)
	return cmd
}

// execveEnv names the program that this test binary, started by runFromMount, runs in its place.
const execveEnv = "KURA_TEST_EXECVE"

// init is runFromMount's other half: it runs before any test, and never returns when asked to
// exec a program; a failed execve exits 126, as a shell does.
func init() {
	path := os.Getenv(execveEnv)
	if path == "" {
		return
	}
	os.Unsetenv(execveEnv)
	err := syscall.Exec(path, append([]string{path}, os.Args[1:]...), os.Environ())
	fmt.Fprintf(os.Stderr, "execve %s: %v\n", path, err)
	os.Exit(126)
}

// TestLazyPullCLIKilledAndResumed: kura pull --lazy makes the image mountable with kura mount
// before its files are fetched; killed (SIGKILL), the mount reads short, never zeros; run
// again, it resumes, the read gets the bytes, the image completes and fsck is clean.
func TestLazyPullCLIKilledAndResumed(t *testing.T) {
	needRootCLI(t)
	reg := registrytest.New(t)
	data := make([]byte, 400<<10)
	rand.New(rand.NewSource(17)).Read(data)
	trueBin, err := os.ReadFile("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	imagetest.Chunked(t, tartest.Tar(t, tartest.Bytes("data", data), tartest.Bytes("small", []byte("hi\n")),
		tartest.Bytes("true", trueBin).Mode(0o755))).Push(t, reg, "lazy/app", "v1")
	ref := "docker://" + reg.Host + "/lazy/app:v1"
	root, scratch := filepath.Join(t.TempDir(), "store"), t.TempDir()
	target := mountTarget(t, scratch, "mnt")

	first := startLazyPull(t, root, ref, "--background-after", "1h") // killed long before
	kuraOK(t, root, "mount", "app", target)
	t.Cleanup(func() { kuraRun(t, root, "umount", target) })
	if b, err := os.ReadFile(filepath.Join(target, "small")); err != nil || string(b) != "hi\n" {
		t.Fatalf("small file: %q, %v", b, err)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	if b, _ := os.ReadFile(filepath.Join(target, "data")); len(b) != 0 {
		t.Fatalf("read %d bytes of a placeholder with its filler killed; want a short read", len(b))
	}
	kuraOK(t, root, "fsck")

	// Restarted, still holding the bulk fetch back: the reads are filled on demand, and a
	// program of the image runs from the mount (exec reads its header, then maps it).
	second := startLazyPull(t, root, ref, "--background-after", "1h")
	if b, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("after restart: %d of %d bytes, %v", len(b), len(data), err)
	}
	if out, err := runFromMount(filepath.Join(target, "true")).CombinedOutput(); err != nil {
		t.Fatalf("running a program of the lazily pulled image: %v\n%s", err, out)
	}
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()

	third := startLazyPull(t, root, ref)
	if err := third.Wait(); err != nil {
		t.Fatalf("resumed kura pull --lazy: %v", err)
	}
	if out := kuraOK(t, root, "images"); !strings.Contains(out, "app") {
		t.Fatalf("kura images after completion:\n%s", out)
	}
	kuraOK(t, root, "fsck")
}

// TestLazyPullCLIFUSEKilledAndResumed: kura pull --lazy --lazy-mode=fuse serves the image
// through FUSE: a mount reads the bytes and runs a program of it; the server killed (SIGKILL),
// the mount's reads fail with ENOTCONN, never zeros; run again, it replaces the dead FUSE mount
// and a new mount reads through it; killed again, the fanotify service (auto) completes the
// image over the dead mount, leaving nothing in lazy/, and fsck is clean.
func TestLazyPullCLIFUSEKilledAndResumed(t *testing.T) {
	needRootCLI(t)
	reg := registrytest.New(t)
	data := make([]byte, 400<<10)
	rand.New(rand.NewSource(18)).Read(data)
	trueBin, err := os.ReadFile("/usr/bin/true")
	if err != nil {
		t.Fatal(err)
	}
	// true in a directory of its own: read-ahead of data's fill would fetch a neighbour.
	imagetest.Chunked(t, tartest.Tar(t, tartest.Bytes("data", data), tartest.Dir("bin"),
		tartest.Bytes("bin/true", trueBin).Mode(0o755))).Push(t, reg, "lazy/fuse", "v1")
	ref := "docker://" + reg.Host + "/lazy/fuse:v1"
	root, scratch := filepath.Join(t.TempDir(), "store"), t.TempDir()
	target := mountTarget(t, scratch, "mnt")

	first := startLazyPull(t, root, ref, "--lazy-mode=fuse", "--background-after", "1h")
	kuraOK(t, root, "mount", "app", target)
	t.Cleanup(func() { kuraRun(t, root, "umount", target) })
	if b, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("read through FUSE: %d of %d bytes, %v", len(b), len(data), err)
	}
	if out, err := runFromMount(filepath.Join(target, "bin/true")).CombinedOutput(); err != nil {
		t.Fatalf("running a program of the image through FUSE: %v\n%s", err, out)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	for _, name := range []string{"data", "bin/true"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); !errors.Is(err, syscall.ENOTCONN) || len(b) != 0 {
			t.Fatalf("%s with the FUSE server killed: %d bytes, %v; want ENOTCONN", name, len(b), err)
		}
	}
	kuraOK(t, root, "fsck")
	kuraOK(t, root, "umount", target)

	// Resumed over the dead FUSE mount: a new mount reads through the new server.
	second := startLazyPull(t, root, ref, "--lazy-mode=fuse", "--background-after", "1h")
	kuraOK(t, root, "mount", "app", target)
	if b, err := os.ReadFile(filepath.Join(target, "data")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("after restart: %d of %d bytes, %v", len(b), len(data), err)
	}
	kuraOK(t, root, "umount", target)
	second.Process.Signal(syscall.SIGKILL)
	second.Wait()

	// Completed by the fanotify service (auto), which detaches the dead FUSE mount first.
	third := startLazyPull(t, root, ref)
	if err := third.Wait(); err != nil {
		t.Fatalf("resumed kura pull --lazy: %v", err)
	}
	if left, _ := os.ReadDir(filepath.Join(root, "lazy")); len(left) != 0 {
		t.Fatalf("the pending pull left %v in lazy/ (a FUSE mount kept over it?)", left)
	}
	if out := kuraOK(t, root, "images"); !strings.Contains(out, "app") {
		t.Fatalf("kura images after completion:\n%s", out)
	}
	kuraOK(t, root, "fsck")
}
