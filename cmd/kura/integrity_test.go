package main

import (
	"archive/tar"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/treetest"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/store"
)

// nobody is the unprivileged user the rootless tests run kura as.
const nobody = testkit.NobodyID

// cli runs a built kura binary, as root or (uid != 0) as an unprivileged user via setpriv.
type cli struct {
	t    *testing.T
	bin  string
	uid  int
	home string // HOME and XDG_DATA_HOME/.. of the unprivileged user
}

// openTempDir is a t.TempDir every user can enter (t.TempDir and its parent are 0700).
func openTempDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// run runs kura with args and returns its combined output and exit code.
func (c cli) run(args ...string) (string, int) {
	c.t.Helper()
	var cmd *exec.Cmd
	if c.uid == 0 {
		cmd = exec.Command(c.bin, args...)
	} else {
		cmd = testkit.Unprivileged(c.t, c.home, c.bin, args...)
	}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return string(out), 0
	case errors.As(err, &ee):
		return string(out), ee.ExitCode()
	}
	c.t.Fatalf("kura %s: %v", strings.Join(args, " "), err)
	return "", -1
}

// ok runs kura and fails the test unless it exits 0.
func (c cli) ok(args ...string) string {
	c.t.Helper()
	out, code := c.run(args...)
	if code != 0 {
		c.t.Fatalf("kura %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// fails runs kura and fails the test unless it exits with code and prints want.
func (c cli) fails(code int, want string, args ...string) {
	c.t.Helper()
	out, got := c.run(args...)
	if got != code || !strings.Contains(out, want) {
		c.t.Fatalf("kura %s: exit %d, want %d and %q in the output:\n%s", strings.Join(args, " "), got, code, want, out)
	}
}

func needRoot(t *testing.T, why string) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "needs root: %s", why)
	}
}

// writeTar writes a root filesystem tar (mode 0644) with the given files, plus a character
// device when dev is set.
func writeTar(t *testing.T, path string, files map[string]string, dev bool) {
	t.Helper()
	entries := []tartest.Entry{tartest.Dir("etc/")}
	for name, data := range files {
		entries = append(entries, tartest.File(name, data))
	}
	if dev {
		entries = append(entries, tartest.Device("etc/null", tar.TypeChar, 1, 3))
	}
	if err := os.WriteFile(path, tartest.Tar(t, entries...), 0o644); err != nil {
		t.Fatal(err)
	}
}

// pushImage imports a tar into a root store and pushes it to the test registry as REPO:v1.
func pushImage(t *testing.T, root cli, reg *registrytest.Registry, tarPath, repo string) string {
	t.Helper()
	store := filepath.Join(t.TempDir(), "pushstore")
	root.ok("--root", store, "import", tarPath, "src")
	ref := reg.Host + "/" + repo + ":v1"
	root.ok("--root", store, "push", "src", ref, "--creds", registrytest.Username+":"+registrytest.Password, "--tls-verify=false")
	return ref
}

// TestRootlessStore (issue 13, case 9): an unprivileged user with the default store under
// $XDG_DATA_HOME/kura imports, pulls from a registry, checks out (copy and hardlink), runs
// fsck and gc. Device nodes fail with a clear error and exit 77, unless --skip-devices.
func TestRootlessStore(t *testing.T) {
	needRoot(t, "switching to an unprivileged user with setpriv")
	bin := testkit.Kura(t)
	work := openTempDir(t)
	home := filepath.Join(work, "home")
	if err := os.Mkdir(home, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	root := cli{t: t, bin: bin}
	user := cli{t: t, bin: bin, uid: nobody, home: home}
	imgTar, devTar := filepath.Join(work, "img.tar"), filepath.Join(work, "dev.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "file a\n", "etc/b": "file b\n"}, false)
	writeTar(t, devTar, map[string]string{"etc/c": "file c\n"}, true)
	reg := registrytest.New(t)
	ref := pushImage(t, root, reg, imgTar, "rootless/app")

	user.ok("import", imgTar, "local")
	user.ok("pull", ref, "--creds", registrytest.Username+":"+registrytest.Password, "--tls-verify=false")
	if out := user.ok("images"); !strings.Contains(out, "local") || !strings.Contains(out, "rootless/app") {
		t.Fatalf("images:\n%s", out)
	}
	storeDir := filepath.Join(home, ".local/share/kura")
	if _, err := os.Stat(filepath.Join(storeDir, "version")); err != nil {
		t.Fatalf("the default rootless store is not under XDG_DATA_HOME: %v", err)
	}
	user.ok("checkout", "local", filepath.Join(home, "copy"))
	user.ok("checkout", "--link", "hardlink", ref, filepath.Join(home, "linked"))
	for _, p := range []string{"copy/etc/a", "linked/etc/b"} {
		b, err := os.ReadFile(filepath.Join(home, p))
		if err != nil || !strings.HasPrefix(string(b), "file ") {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
	// Case 3 rootless: a write through the hardlink checkout does not reach the next one, and
	// untouched copies are not replaced (the owner check allows for chown being impossible).
	f, err := os.OpenFile(filepath.Join(home, "linked/etc/b"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("written through the checkout\n")
	f.Close()
	for i, want := range []int{1, 0} {
		dir := filepath.Join(home, "linked"+strconv.Itoa(i+2))
		var st checkoutJSON
		if err := json.Unmarshal([]byte(user.ok("--json", "checkout", "--link", "hardlink", ref, dir)), &st); err != nil {
			t.Fatal(err)
		}
		if st.VariantsReplaced != want || st.Linked != 2 {
			t.Fatalf("hardlink checkout %d: %+v, want %d replaced of 2 linked", i+2, st, want)
		}
		if b, _ := os.ReadFile(filepath.Join(dir, "etc/b")); string(b) != "file b\n" {
			t.Fatalf("hardlink checkout %d: etc/b = %q", i+2, b)
		}
	}
	user.ok("fsck", "--deep")

	user.ok("import", devTar, "dev")
	user.fails(77, "--skip-devices", "checkout", "dev", filepath.Join(home, "dev1"))
	user.ok("checkout", "--skip-devices", "dev", filepath.Join(home, "dev2"))

	user.fails(8, "in use", "rmi", "local") // checked out
	user.ok("rmi", "--force", "local", ref, "dev")
	for _, dir := range []string{"copy", "linked", "linked2", "linked3", "dev2"} {
		user.ok("checkout", "--release", filepath.Join(home, dir))
	}
	user.ok("gc")
	if out := user.ok("fsck", "--repair"); !strings.Contains(out, "0 problems") {
		t.Fatalf("fsck after gc:\n%s", out)
	}
	if out := user.ok("df"); !strings.Contains(out, "images:   0") {
		t.Fatalf("df after gc:\n%s", out)
	}
}

// TestReadOnlyStore (issue 13, case 10): a store on a read-only bind mount serves images, df,
// fsck, checkout and mount (its composefs image built outside the store) without writing;
// writes fail with exit 77 and say the store is read-only.
func TestReadOnlyStore(t *testing.T) {
	needRoot(t, "bind mounts")
	bin := testkit.Kura(t)
	work := t.TempDir()
	root := cli{t: t, bin: bin}
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "read-only store\n", "etc/big": strings.Repeat("x", 4096)}, false)
	prepared := filepath.Join(work, "store")
	root.ok("--root", prepared, "import", imgTar, "img")
	os.Remove(filepath.Join(prepared, "lock")) // a baked-in store may come without one
	ro := filepath.Join(work, "ro")
	os.Mkdir(ro, 0o755)
	if err := unix.Mount(prepared, ro, "", unix.MS_BIND, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(ro, unix.MNT_DETACH) })
	if err := unix.Mount("", ro, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	before := treetest.Snapshot(t, prepared).String()

	if out := root.ok("--root", ro, "images"); !strings.Contains(out, "img") {
		t.Fatalf("images:\n%s", out)
	}
	root.ok("--root", ro, "df")
	root.ok("--root", ro, "fsck", "--deep")
	co := filepath.Join(work, "co")
	root.ok("--root", ro, "checkout", "img", co)
	if b, _ := os.ReadFile(filepath.Join(co, "etc/a")); string(b) != "read-only store\n" {
		t.Fatalf("checkout: etc/a = %q", b)
	}
	mnt := filepath.Join(work, "mnt")
	os.Mkdir(mnt, 0o755)
	root.ok("--root", ro, "mount", "img", mnt)
	b, err := os.ReadFile(filepath.Join(mnt, "etc/big"))
	unix.Unmount(mnt, unix.MNT_DETACH)
	if err != nil || string(b) != strings.Repeat("x", 4096) {
		t.Fatalf("reading through the mount: %d bytes, %v", len(b), err)
	}

	root.fails(77, "read-only", "--root", ro, "import", imgTar, "other")
	root.fails(77, "read-only", "--root", ro, "gc")
	root.fails(77, "read-only", "--root", ro, "fsck", "--repair")
	root.fails(77, "read-only", "--root", ro, "checkout", "--link", "hardlink", "img", filepath.Join(work, "co2"))
	if after := treetest.Snapshot(t, prepared).String(); after != before {
		t.Fatalf("the read-only store changed:\nbefore:\n%s\nafter:\n%s", before, after)
	}
}

// TestFsckRepairRefetches: fsck --repair never removes a name. A damaged object of a pulled
// image is re-fetched from the registry the image came from; one of a locally imported image is
// removed and reported (exit non-zero) while the image keeps its name.
func TestFsckRepairRefetches(t *testing.T) {
	bin := testkit.Kura(t)
	work := t.TempDir()
	root := cli{t: t, bin: bin}
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/pulled": "pulled content\n"}, false)
	localTar := filepath.Join(work, "local.tar")
	writeTar(t, localTar, map[string]string{"etc/local": "local content\n"}, false)
	reg := registrytest.New(t)
	ref := pushImage(t, root, reg, imgTar, "fsck/app")
	st := filepath.Join(work, "store")
	creds := registrytest.Username + ":" + registrytest.Password
	root.ok("--root", st, "pull", ref, "--creds", creds, "--tls-verify=false")
	root.ok("--root", st, "import", localTar, "local")

	damage := func(content string) string {
		t.Helper()
		p := objectPath(t, st, content)
		os.Chmod(p, 0o644)
		if err := os.WriteFile(p, []byte(strings.ToUpper(content)), 0o444); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pulled := damage("pulled content\n")
	root.fails(5, "damaged", "--root", st, "fsck")
	root.ok("--root", st, "fsck", "--repair", "--creds", creds, "--tls-verify=false")
	if b, err := os.ReadFile(pulled); err != nil || string(b) != "pulled content\n" {
		t.Fatalf("pulled object not re-fetched: %q %v", b, err)
	}
	root.ok("--root", st, "fsck", "--deep")

	damage("local content\n")
	root.fails(5, "local", "--root", st, "fsck", "--repair")
	if out := root.ok("--root", st, "images"); !strings.Contains(out, "local") {
		t.Fatalf("repair removed the local image's only name:\n%s", out)
	}
	// A re-import of its tar restores it.
	root.ok("--root", st, "import", localTar, "local")
	root.ok("--root", st, "fsck")
}

// objectPath is where the store at root keeps the object holding content (the store names it:
// tests do not encode its layout).
func objectPath(t *testing.T, root, content string) string {
	t.Helper()
	s, err := store.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	p, err := s.ObjectPath(digest.FromString(content))
	if err != nil {
		t.Fatal(err)
	}
	return p
}
