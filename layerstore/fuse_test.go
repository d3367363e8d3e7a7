package layerstore

import (
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/hanwen/go-fuse/v2/fuse"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/fusectl"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit"
)

func requireFUSE(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting FUSE needs root")
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		testkit.Skip(t, "no /dev/fuse: %v", err)
	}
}

// searchableDir is a mount point every user can reach (t.TempDir's are 0700), so that only
// the mount's own permission check can keep another user out.
func searchableDir(t *testing.T) string {
	t.Helper()
	base, err := os.MkdirTemp("/var/tmp", "kura-als-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(base, "als")
}

func mountType(t *testing.T, dir string) string {
	t.Helper()
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	e, _ := mountinfo.Top(entries, dir)
	return e.FSType
}

// TestMountAnswersContainersStorage walks the mount as containers/storage does: stat of diff,
// info and blob; the diff symlink; info and blob read through FUSE; use created (ENOENT: the
// store counts uses); the layer directory removed (ENOENT); an unknown layer not found; Close
// unmounts.
func TestMountAnswersContainersStorage(t *testing.T) {
	requireFUSE(t)
	f := newFixture(t)
	dir := searchableDir(t)
	m, err := Mount(context.Background(), dir, f.ls, 0)
	if err != nil {
		t.Fatal(err)
	}
	closed := false
	t.Cleanup(func() {
		if !closed {
			m.Close()
		}
	})
	if got := mountType(t, dir); got != "fuse."+Subtype {
		t.Fatalf("mounted at %s: %q", dir, got)
	}
	layerDir := filepath.Join(dir, base64.StdEncoding.EncodeToString([]byte(f.ref)), f.img.Descs[0].Digest.String())
	for _, name := range []string{"diff", "info", "blob"} {
		if _, err := os.Stat(filepath.Join(layerDir, name)); err != nil {
			t.Fatalf("stat %s: %v", name, err)
		}
	}
	l, err := f.ls.Lookup(context.Background(), f.ref, f.img.Descs[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	if target, err := os.Readlink(filepath.Join(layerDir, "diff")); err != nil || target != l.Diff {
		t.Errorf("diff links to %q, %v; want %s", target, err, l.Diff)
	}
	checkFile(t, filepath.Join(layerDir, "diff", "etc/os-release"), "ID=base\n")
	checkFile(t, filepath.Join(layerDir, "info"), string(l.Info))
	if b, err := os.ReadFile(filepath.Join(layerDir, "blob")); err != nil || !bytes.Equal(b, f.img.Blobs[0]) {
		t.Errorf("blob through FUSE: %d bytes (%s), %v; want the registry's %s", len(b), digest.FromBytes(b), err, f.img.Descs[0].Digest)
	}
	if _, err := os.Create(filepath.Join(layerDir, "use")); !errors.Is(err, syscall.ENOENT) {
		t.Errorf("creating use: %v; want ENOENT", err)
	}
	if err := syscall.Rmdir(layerDir); err != syscall.ENOENT {
		t.Errorf("rmdir of the layer directory: %v; want ENOENT", err)
	}
	if _, err := os.Stat(filepath.Join(dir, base64.StdEncoding.EncodeToString([]byte(f.ref)), digest.FromString("none").String(), "diff")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("stat of an unknown layer: %v; want ENOENT", err)
	}
	// Another user cannot look layers up (and so cannot make the server pull): no allow_other.
	home := testkit.UnprivilegedHome(t)
	if out, err := testkit.Unprivileged(t, home, "stat", filepath.Join(layerDir, "info")).CombinedOutput(); err == nil {
		t.Errorf("an unprivileged user could stat a layer: %s", out)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	closed = true
	if got := mountType(t, dir); got != "" {
		t.Errorf("after Close, %s is still mounted (%s)", dir, got)
	}
}

// TestDeadMountKeepsItsRoot: a server that dies (here its FUSE connection is aborted, which is
// what a kill -9 leaves) leaves a mount whose lookups fail ENOTCONN, and containers/storage then
// pulls normally; but it also stats PATH itself whenever podman opens its store (pull, rmi, run)
// and fails the command if that stat fails. The kernel answers it from the root's cached
// attributes, which must not expire: with the one-second default every podman command failed a
// second after a kill (TestLayerStorePodman in interop/ was flaky under load because of it).
func TestDeadMountKeepsItsRoot(t *testing.T) {
	requireFUSE(t)
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "als")
	m, err := Mount(context.Background(), dir, f.ls, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH); m.Wait() })
	var st unix.Stat_t
	if err := unix.Stat(dir, &st); err != nil {
		t.Fatal(err)
	}
	if err := fusectl.Abort(fusectl.Conn(st.Dev)); err != nil {
		t.Fatal(err)
	}
	diff := filepath.Join(dir, base64.StdEncoding.EncodeToString([]byte(f.ref)), f.img.Descs[0].Digest.String(), "diff")
	if _, err := os.Stat(diff); !errors.Is(err, syscall.ENOTCONN) {
		t.Fatalf("stat of a layer through the aborted mount: %v; want ENOTCONN", err)
	}
	if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
		t.Errorf("stat of the aborted mount's root: %v, %v; want the directory", fi, err)
	}
	var out fuse.AttrOut
	if errno := (&rootNode{}).Getattr(context.Background(), nil, &out); errno != 0 || out.Timeout() < 24*time.Hour {
		t.Errorf("the root's attributes are cached for %v (%v); want them kept for good", out.Timeout(), errno)
	}
}

// TestCleanStale: a mount a server left is removed; another file system mounted at the path is
// an error, not unmounted.
func TestCleanStale(t *testing.T) {
	requireFUSE(t)
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), "als")
	m, err := Mount(context.Background(), dir, f.ls, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := CleanStale(dir); err != nil {
		t.Fatal(err)
	}
	m.Wait() // the detached mount's server stops: the stale mount is gone
	if got := mountType(t, dir); got != "" {
		t.Errorf("after CleanStale, %s is still mounted (%s)", dir, got)
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(dir, syscall.MNT_DETACH) })
	if err := CleanStale(dir); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("CleanStale of a tmpfs: %v; want already exists", err)
	}
	if got := mountType(t, dir); got != "tmpfs" {
		t.Errorf("CleanStale touched the tmpfs: %q mounted now", got)
	}
}

// TestMountComposefsAnswersBeforeMounting: with composefs diffs, the first lookup through FUSE
// answers once the layer is pulled, and the stat containers/storage makes of diff right after it
// succeeds; every later resolution of diff (here: reading a file through it, as overlayfs reads
// a container's lower layer) waits for the mount and sees the layer's files.
func TestMountComposefsAnswersBeforeMounting(t *testing.T) {
	requireFUSE(t)
	f := newFixtureWith(t, Options{Diff: DiffComposefs})
	dir := searchableDir(t)
	m, err := Mount(context.Background(), dir, f.ls, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	layerDir := filepath.Join(dir, base64.StdEncoding.EncodeToString([]byte(f.ref)), f.img.Descs[0].Digest.String())
	fi, err := os.Stat(filepath.Join(layerDir, "diff"))
	if err != nil || !fi.IsDir() {
		t.Fatalf("stat diff: %v, %v; want a directory", fi, err)
	}
	checkFile(t, filepath.Join(layerDir, "diff", "etc/os-release"), "ID=base\n")
	target, err := os.Readlink(filepath.Join(layerDir, "diff"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(target, syscall.MNT_DETACH) })
	if got := mountType(t, target); got == "" {
		t.Errorf("after a read through diff, %s is not mounted", target)
	}
}
