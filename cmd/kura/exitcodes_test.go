package main

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestExitCodes (issue 18): every class of failure exits with the code README.md lists, as the
// binary runs it: a bad command line 2, not found 3, hostile input 4, a digest mismatch 5, a
// transport Kura lacks 6, an image in use 8, permission denied 77.
func TestExitCodes(t *testing.T) {
	needRoot(t, "switching to an unprivileged user with setpriv")
	bin := testkit.Kura(t)
	work := openTempDir(t)
	home := filepath.Join(work, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	root := cli{t: t, bin: bin}
	user := cli{t: t, bin: bin, uid: nobody, home: home}
	st := filepath.Join(work, "store")
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "exit codes\n"}, false)
	root.ok("--root", st, "import", imgTar, "img")
	layout := "oci:" + filepath.Join(work, "layout")

	usage := [][]string{
		{"push", "img", layout, "--level", "99"},
		{"push", "img", layout, "--format", "brotli"},
		{"push", "img", layout, "--jobs", "0"},
		{"copy", layout, layout + "2", "--jobs", "-5"},
		{"pull", "registry.invalid/x", "--jobs", "0"},
		{"pull", "registry.invalid/x", "--jobs", "-5"},
		{"images", "--no-such-flag"},
		{"no-such-command"},
		{"layer", "convert", "a", "b", "--level", "0"},
	}
	for _, args := range usage {
		root.fails(errdefs.ExitUsage, "", append([]string{"--root", st}, args...)...)
	}
	for _, args := range [][]string{
		{"pull", "containers-storage:" + work},
		{"push", "img", "docker-archive:" + filepath.Join(work, "a.tar")},
		{"copy", layout, "containers-storage:localhost/x:v1"}, // docker-archive:, oci-archive: and dir: work
	} {
		root.fails(errdefs.ExitUnsupported, "unsupported", append([]string{"--root", st}, args...)...)
	}
	root.fails(errdefs.ExitNotFound, "not found", "--root", st, "rmi", "no-such-image")

	evil := filepath.Join(work, "evil.tar")
	writeTar(t, evil, map[string]string{"../escape": "x"}, false)
	root.fails(errdefs.ExitInvalid, "", "--root", st, "import", evil, "evil")

	co := filepath.Join(work, "co")
	root.ok("--root", st, "checkout", "img", co)
	root.fails(errdefs.ExitInUse, "in use", "--root", st, "rmi", "img")
	root.ok("--root", st, "checkout", "--release", co)

	// The user cannot create a store under a root-owned directory, nor mount.
	locked := filepath.Join(work, "locked")
	if err := os.Mkdir(locked, 0o755); err != nil {
		t.Fatal(err)
	}
	user.fails(errdefs.ExitPermission, "permission denied", "--root", filepath.Join(locked, "store"), "images")
	mnt := filepath.Join(work, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("chmod", "-R", "a+rX", st).CombinedOutput(); err != nil {
		t.Fatalf("chmod: %v\n%s", err, out)
	}
	user.fails(errdefs.ExitPermission, "root", "--root", st, "mount", "img", mnt)

	obj := objectPath(t, st, "exit codes\n")
	os.Chmod(obj, 0o644)
	if err := os.WriteFile(obj, []byte("EXIT CODES\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	root.fails(errdefs.ExitVerify, "damaged", "--root", st, "fsck")
}

// TestExitCodesDocumented: README.md's list of exit codes is errdefs' list, no more, no less.
func TestExitCodesDocumented(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, list, ok := strings.Cut(string(b), "Exit codes:")
	if !ok {
		t.Fatal("README.md has no \"Exit codes:\" list")
	}
	list, _, _ = strings.Cut(list, "\n\n")
	list = strings.ReplaceAll(list, "\n", " ")
	var got []int
	for _, m := range regexp.MustCompile(`(?:^ |, |and )(\d+) `).FindAllStringSubmatch(list, -1) {
		n, _ := strconv.Atoi(m[1])
		got = append(got, n)
	}
	want := []int{errdefs.ExitOK, errdefs.ExitFailure, errdefs.ExitUsage, errdefs.ExitNotFound, errdefs.ExitInvalid,
		errdefs.ExitVerify, errdefs.ExitUnsupported, errdefs.ExitInUse, errdefs.ExitPermission, errdefs.ExitSIGINT, errdefs.ExitSIGTERM}
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Fatalf("README.md lists exit codes %v, errdefs has %v:\n%s", got, want, list)
	}
}

// TestPullInterrupted (issue 18): a pull stopped by SIGINT or SIGTERM in the middle of a layer
// exits 130 or 143 and leaves nothing but temp files: fsck finds the store clean, and the next
// pull completes the image.
func TestPullInterrupted(t *testing.T) {
	bin := testkit.Kura(t)
	work := t.TempDir()
	root := cli{t: t, bin: bin}
	data := make([]byte, 4<<20)
	rand.New(rand.NewSource(18)).Read(data)
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/big": string(data)}, false)
	reg := registrytest.New(t)
	creds := registrytest.Username + ":" + registrytest.Password
	src := filepath.Join(work, "src")
	root.ok("--root", src, "import", imgTar, "src")
	ref := reg.Host + "/signal/app:v1"
	var rep struct {
		Layers []struct{ Digest digest.Digest }
	}
	out := root.ok("--root", src, "--json", "push", "src", ref, "--format", "gzip", "--creds", creds, "--tls-verify=false")
	if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Layers) != 1 {
		t.Fatalf("push --json: %q %v", out, err)
	}
	st := filepath.Join(work, "store")
	pull := []string{"--root", st, "pull", ref, "--creds", creds, "--tls-verify=false", "--idle-timeout", "0"}
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		// The layer's blob stops after 2 MiB and the connection stays open: the pull waits there,
		// its file (larger than the store keeps in memory) half written to a temp file.
		reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.Stall, AfterBytes: 2 << 20, Digest: rep.Layers[0].Digest})
		cmd := exec.Command(bin, pull...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill() })
		waitFor(t, "a temp file of the pull", func() bool {
			objs, _ := filepath.Glob(filepath.Join(st, "tmp", "*", "obj-*"))
			return len(objs) > 0
		})
		cmd.Process.Signal(sig)
		code := waitExit(t, cmd)
		if want := 128 + int(sig); code != want {
			t.Fatalf("pull stopped by %v: exit %d, want %d\n%s", sig, code, want, stderr.String())
		}
		if out := root.ok("--root", st, "fsck"); !strings.Contains(out, ": 0 problems") {
			t.Fatalf("fsck after %v:\n%s", sig, out)
		}
		if out := root.ok("--root", st, "images", "-q"); out != "" {
			t.Fatalf("an interrupted pull left an image:\n%s", out)
		}
	}
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.None})
	root.ok(pull...)
	root.ok("--root", st, "fsck")
	dir := filepath.Join(work, "co")
	root.ok("--root", st, "checkout", ref, dir)
	if b, err := os.ReadFile(filepath.Join(dir, "etc/big")); err != nil || !bytes.Equal(b, data) {
		t.Fatalf("the pull after the interrupted ones: etc/big differs (%v)", err)
	}
}

// waitFor polls cond (a state another process makes) until it holds, failing after a minute.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited a minute for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// waitExit waits for cmd and returns its exit code; a process still running after a minute is
// killed and fails the test.
func waitExit(t *testing.T, cmd *exec.Cmd) int {
	t.Helper()
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-done
		t.Fatal("kura did not stop within a minute of the signal")
	}
	return cmd.ProcessState.ExitCode()
}
