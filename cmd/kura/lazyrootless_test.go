package main

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// needUserFUSE fails (never skips) unless an unprivileged user can mount FUSE here:
// fusermount3 installed (Debian's fuse3) and /dev/fuse open to every user (0666, as Debian's
// udev makes it); scripts/setup.sh sees to both.
func needUserFUSE(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("fusermount3"); err != nil {
		t.Fatalf("fusermount3 (Debian package fuse3; scripts/setup.sh installs it) is missing: %v", err)
	}
	st, err := os.Stat("/dev/fuse")
	if err != nil || st.Mode().Perm()&0o006 != 0o006 {
		t.Fatalf("/dev/fuse is not open to every user (%v, %v): scripts/setup.sh makes it 0666 as udev does", st, err)
	}
}

// rootlessUser runs kura and shell commands as uid 65534 with a HOME of its own, where its
// default store lives.
type rootlessUser struct {
	t             *testing.T
	bin, home     string
	mnt, storeDir string
}

func newRootlessUser(t *testing.T) *rootlessUser {
	needRootCLI(t)
	needUserFUSE(t)
	u := &rootlessUser{t: t, bin: testkit.Kura(t), home: testkit.UnprivilegedHome(t)}
	u.mnt, u.storeDir = filepath.Join(u.home, "mnt"), filepath.Join(u.home, ".local/share/kura")
	if out, err := u.sh("mkdir " + u.mnt); err != nil {
		t.Fatalf("mkdir: %v %s", err, out)
	}
	// A test that fails leaves no mount behind (root can detach the user's FUSE mount).
	t.Cleanup(func() { syscall.Unmount(u.mnt, syscall.MNT_DETACH) })
	return u
}

// sh runs a shell script as the user and returns its combined output.
func (u *rootlessUser) sh(script string) (string, error) {
	out, err := testkit.Unprivileged(u.t, u.home, "/bin/sh", "-c", script).CombinedOutput()
	return string(out), err
}

// kura runs kura as the user and fails the test unless it exits 0.
func (u *rootlessUser) kura(args ...string) string {
	u.t.Helper()
	out, err := testkit.Unprivileged(u.t, u.home, u.bin, args...).CombinedOutput()
	if err != nil {
		u.t.Fatalf("kura %s as uid %d: %v\n%s", strings.Join(args, " "), testkit.NobodyID, err, out)
	}
	return string(out)
}

// lazyPull starts kura pull --lazy --mount as the user and returns once it says the image is
// mounted, with the rest of its stdout.
func (u *rootlessUser) lazyPull(ref string, extra ...string) (*exec.Cmd, *bufio.Reader) {
	u.t.Helper()
	args := append([]string{"pull", "--lazy", "--mount", u.mnt, ref, "--tls-verify=false",
		"--creds", registrytest.Username + ":" + registrytest.Password, "--name", "app"}, extra...)
	cmd := testkit.Unprivileged(u.t, u.home, u.bin, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	pipe, err := cmd.StdoutPipe()
	if err != nil {
		u.t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		u.t.Fatal(err)
	}
	u.t.Cleanup(func() { cmd.Process.Kill() })
	out := bufio.NewReader(pipe)
	if line, err := out.ReadString('\n'); !strings.Contains(line, "mounted at "+u.mnt) {
		cmd.Process.Kill()
		cmd.Wait()
		u.t.Fatalf("kura pull --lazy --mount said %q (%v)\n%s", line, err, stderr.String())
	}
	return cmd, out
}

// hostFile is the content of a host file, symbolic links followed.
func hostFile(t *testing.T, path string) []byte {
	t.Helper()
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(real)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rootlessImage pushes a two-layer image: the host's /bin/sh (dash) with its loader and libc,
// files of many sizes, a file of mode 0600 owned by root, a symlink; the second layer whites
// out a file of the first. It returns the reference and the content of each regular file.
func rootlessImage(t *testing.T, reg *registrytest.Registry) (string, map[string][]byte) {
	rng := rand.New(rand.NewSource(65534))
	random := func(n int) []byte { b := make([]byte, n); rng.Read(b); return b }
	files := map[string][]byte{
		"bin/sh": hostFile(t, "/bin/sh"), "lib64/ld-linux-x86-64.so.2": hostFile(t, "/lib64/ld-linux-x86-64.so.2"),
		"lib/x86_64-linux-gnu/libc.so.6": hostFile(t, "/lib/x86_64-linux-gnu/libc.so.6"),
		"etc/msg":                        []byte("a line of the image, long enough not to be inlined by composefs: filled on open\n"),
		"etc/secret":                     random(3000), "data": random(600 << 10), "data2": random(300 << 10),
	}
	var l1 []tartest.Entry
	for _, name := range []string{"bin/sh", "lib64/ld-linux-x86-64.so.2", "lib/x86_64-linux-gnu/libc.so.6", "etc/msg", "data", "data2"} {
		l1 = append(l1, tartest.Bytes(name, files[name]).Mode(0o755))
	}
	l1 = append(l1, tartest.Bytes("etc/secret", files["etc/secret"]).Mode(0o600), tartest.Bytes("old", random(200)),
		tartest.Symlink("etc/link", "msg"))
	l2 := []tartest.Entry{tartest.Whiteout("old"), tartest.File("etc/new", "a file of the second layer\n")}
	files["etc/new"] = []byte("a file of the second layer\n")
	imagetest.Chunked(t, tartest.Tar(t, l1...), tartest.Tar(t, l2...)).Push(t, reg, "rootless/lazy", "v1")
	return "docker://" + reg.Host + "/rootless/lazy:v1", files
}

func sha(b []byte) string { return fmt.Sprintf("%x", sha256.Sum256(b)) }

// TestLazyPullRootless: an unprivileged user lazily pulls an image into their own store with
// kura pull --lazy --mount DIR (FUSE through fusermount3, no root anywhere): the mount shows the
// merged tree (owners and modes as the image says, the whiteout applied), a file never fetched
// is fetched on its first open with the right bytes, and the image's /bin/sh runs from it,
// chrooted in a user namespace. Killed (SIGKILL), the mount fails every read with ENOTCONN,
// never zeros, and fsck is clean; run again, it replaces the dead mount, reads the right bytes,
// and completes to an ordinary image (DiffIDs checked by the import; fsck clean, a checkout
// holds the same bytes); it serves the mount until the user unmounts it (kura umount).
func TestLazyPullRootless(t *testing.T) {
	u := newRootlessUser(t)
	reg := registrytest.New(t)
	ref, files := rootlessImage(t, reg)
	mnt := u.mnt

	// Without --mount there is nothing a user can serve: refused before anything is recorded.
	refused, err := testkit.Unprivileged(t, u.home, u.bin, "pull", "--lazy", ref, "--tls-verify=false",
		"--creds", registrytest.Username+":"+registrytest.Password).CombinedOutput()
	if ee := (*exec.ExitError)(nil); !errors.As(err, &ee) || ee.ExitCode() != 77 || !strings.Contains(string(refused), "--mount") {
		t.Fatalf("kura pull --lazy without root or --mount: %v\n%s", err, refused)
	}
	if left, _ := os.ReadDir(filepath.Join(u.storeDir, "lazy")); len(left) != 0 {
		t.Fatalf("the refused pull left %v in lazy/", left)
	}

	first, _ := u.lazyPull(ref, "--background-after", "1h")
	out, err := u.sh(fmt.Sprintf("cd %s && stat -c '%%n %%a %%u:%%g' etc/secret data && readlink etc/link && test ! -e old && cat etc/new", mnt))
	if want := "etc/secret 600 0:0\ndata 755 0:0\nmsg\n" + string(files["etc/new"]); err != nil || out != want {
		t.Fatalf("the mounted tree: %v\n%q\nwant %q", err, out, want)
	}
	before := reg.Proxy.BytesServed()
	for _, name := range []string{"data", "etc/secret"} { // 0600 root's: the owner's view needs no permission check
		if out, err := u.sh("sha256sum < " + filepath.Join(mnt, name)); err != nil || !strings.HasPrefix(out, sha(files[name])) {
			t.Fatalf("%s through the mount: %v %q, want sha256 %s", name, err, out, sha(files[name]))
		}
	}
	if served := reg.Proxy.BytesServed() - before; served < 600<<10 || served > 2<<20 {
		t.Fatalf("the first opens fetched %d bytes; want about data's 600 KiB, not the image", served)
	}
	script := `read l < /etc/msg; echo "ran: $l"`
	if out, err := u.sh(fmt.Sprintf("cd %s && unshare -r chroot . /bin/sh -c '%s'", mnt, script)); err != nil || out != "ran: "+string(files["etc/msg"]) {
		t.Fatalf("the image's /bin/sh chrooted in a user namespace: %v\n%s", err, out)
	}
	first.Process.Signal(syscall.SIGKILL)
	first.Wait()
	for _, name := range []string{"data", "data2", "etc/msg"} { // read before, never read, the program's
		out, err := u.sh("cat " + filepath.Join(mnt, name))
		if err == nil || !strings.Contains(out, "Transport endpoint is not connected") || strings.Contains(out, "\x00\x00\x00\x00") {
			t.Fatalf("%s with the server killed: %v, %d bytes of output; want ENOTCONN and no content", name, err, len(out))
		}
	}
	u.kura("fsck")

	second, rest := u.lazyPull(ref) // over the dead mount; no hold: it completes
	if out, err := u.sh("sha256sum < " + filepath.Join(mnt, "data2")); err != nil || !strings.HasPrefix(out, sha(files["data2"])) {
		t.Fatalf("data2 after the restart: %v %q", err, out)
	}
	if line, err := rest.ReadString('\n'); !strings.Contains(line, "complete") {
		t.Fatalf("kura pull --lazy --mount said %q (%v), want complete", line, err)
	}
	u.checkComplete(files)
	u.kura("umount", mnt)
	if err := second.Wait(); err != nil {
		t.Fatalf("kura pull --lazy --mount after its mount was unmounted: %v", err)
	}
	io.Copy(io.Discard, rest)
	u.kura("fsck")

	// The image complete, the same command is a rootless read-only view of it, which SIGINT
	// takes down.
	third, _ := u.lazyPull(ref)
	if out, err := u.sh("sha256sum < " + filepath.Join(mnt, "data")); err != nil || !strings.HasPrefix(out, sha(files["data"])) {
		t.Fatalf("data through a mount of the complete image: %v %q", err, out)
	}
	third.Process.Signal(syscall.SIGINT)
	if err := third.Wait(); third.ProcessState.ExitCode() != 130 {
		t.Fatalf("kura pull --lazy --mount interrupted: %v, want exit 130", err)
	}
	if out, err := u.sh("grep -c ' " + mnt + " ' /proc/self/mountinfo"); err == nil {
		t.Fatalf("%s is still mounted after SIGINT: %s", mnt, out)
	}
	u.kura("fsck")
}

// checkComplete checks the completed pull as the user: the mount still reads every file (now
// from the store), the image is listed, nothing is left in lazy/, and a checkout of it holds
// the same bytes.
func (u *rootlessUser) checkComplete(files map[string][]byte) {
	u.t.Helper()
	if out := u.kura("images"); !strings.Contains(out, "app") {
		u.t.Fatalf("kura images after completion:\n%s", out)
	}
	if left, _ := os.ReadDir(filepath.Join(u.storeDir, "lazy")); len(left) != 0 {
		u.t.Fatalf("the pending pull left %v in lazy/", left)
	}
	co := filepath.Join(u.home, "co")
	u.kura("checkout", "app", co)
	for name, b := range files {
		for _, root := range []string{u.mnt, co} {
			if out, err := u.sh("sha256sum < " + filepath.Join(root, name)); err != nil || !strings.HasPrefix(out, sha(b)) {
				u.t.Fatalf("%s in %s after completion: %v %q", name, root, err, out)
			}
		}
	}
}
