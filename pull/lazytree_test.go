package pull

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"math/rand"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/lazy"
	"github.com/kura-oci/kura/registry/registrytest"
)

// treeLayers are two layers that exercise the merge: owners, modes, xattrs, a hard link, a
// symlink, a device node, a fifo, an empty file; the second whites out a file, makes a
// directory opaque and replaces a file.
func treeLayers(t *testing.T) [][]byte {
	rng := rand.New(rand.NewSource(7))
	random := func(n int) string { b := make([]byte, n); rng.Read(b); return string(b) }
	mt := time.Date(2024, 5, 6, 7, 8, 9, 0, time.UTC)
	l1 := tartest.At(mt,
		tartest.Dir("a/").Mode(0o750).Owner(1000, 1001).Xattr("user.dir", "d"),
		tartest.File("a/f1", random(100<<10)).Mode(0o640).Owner(1000, 1000).Xattr("user.x", "1"),
		tartest.File("a/f2", "a small file of the first layer, longer than sixty-four bytes\n").Mode(0o644),
		tartest.Hardlink("a/h", "a/f1"),
		tartest.Symlink("s", "a/f1"),
		tartest.File("b", random(5000)).Mode(0o600),
		tartest.Dir("c/").Mode(0o755),
		tartest.File("c/x", random(3000)).Mode(0o644),
		tartest.Device("dev/zero0", tar.TypeChar, 1, 5).Mode(0o666),
		tartest.Fifo("p").Mode(0o644),
		tartest.File("e", "").Mode(0o4755),
	)
	l2 := tartest.At(mt.Add(time.Hour),
		tartest.Whiteout("b"),
		tartest.Opaque("c"),
		tartest.File("c/y", random(4000)).Mode(0o644),
		tartest.File("a/f2", random(70000)).Mode(0o600).Owner(5, 6),
		tartest.File("n", "new in the second layer\n").Mode(0o644),
	)
	return [][]byte{tartest.Tar(t, l1...), tartest.Tar(t, l2...)}
}

// newTreeEnv pushes the image of layers and pulls it lazily into a fresh store, unmounted.
func newTreeEnv(t *testing.T, layers [][]byte) (*lazyEnv, *lazy.Pending) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "this test makes device nodes in a checkout and compares owners: it needs root")
	}
	e := &lazyEnv{reg: registrytest.New(t), s: teststore.Open(t), target: t.TempDir()}
	if err := os.Chmod(filepath.Dir(e.target), 0o711); err != nil { // other users reach the mount
		t.Fatal(err)
	}
	e.img = buildImage(t, layers...)
	e.img.push(t, e.reg, "app", "v0")
	p, err := PullLazy(context.Background(), e.s, e.source(t))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(e.target, unix.MNT_DETACH) })
	return e, p
}

// snapshot describes every path below root as lstat, readlink, the xattrs and the content
// show it, with hard links grouped by inode.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out, inodes := map[string]string{}, map[uint64][]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || p == root {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		desc := fmt.Sprintf("mode %o owner %d:%d nlink %d rdev %d mtime %d", st.Mode, st.Uid, st.Gid, st.Nlink, st.Rdev, st.Mtim.Sec)
		switch st.Mode & unix.S_IFMT {
		case unix.S_IFREG:
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" size %d sha256 %x", len(b), sha256.Sum256(b))
			if st.Nlink > 1 {
				inodes[st.Ino] = append(inodes[st.Ino], rel)
			}
		case unix.S_IFLNK:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + l
		case unix.S_IFDIR:
			desc = strings.Replace(desc, fmt.Sprintf(" mtime %d", st.Mtim.Sec), "", 1) // a checkout's directories are dated when made
		}
		out[rel] = desc + " xattrs " + xattrs(t, p)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, names := range inodes {
		sort.Strings(names)
		out["links of "+names[0]] = strings.Join(names, " ")
	}
	return out
}

// xattrs lists the user.* xattrs of p with their values.
func xattrs(t *testing.T, p string) string {
	t.Helper()
	buf := make([]byte, 4096)
	n, err := unix.Llistxattr(p, buf)
	if err != nil {
		t.Fatalf("listxattr %s: %v", p, err)
	}
	var out []string
	for _, k := range strings.Split(string(buf[:n]), "\x00") {
		if !strings.HasPrefix(k, "user.") {
			continue
		}
		v := make([]byte, 256)
		m, err := unix.Lgetxattr(p, k, v)
		if err != nil {
			t.Fatalf("getxattr %s %s: %v", p, k, err)
		}
		out = append(out, k+"="+string(v[:m]))
	}
	sort.Strings(out)
	return strings.Join(out, ",")
}

// TestLazyMountTreeMatchesCheckout: WithLazyMount serves the image's merged tree while its
// layers are pending (every file filled on its first open, the bulk fetch held back), and it
// shows what a checkout of the completed image shows: types, modes, owners, times, links,
// device numbers, xattrs, content; the whiteout and the opaque directory applied. The image
// completes with its DiffIDs, and the mount serves on until it is unmounted.
func TestLazyMountTreeMatchesCheckout(t *testing.T) {
	e, p := newTreeEnv(t, treeLayers(t))
	hold, complete := make(chan struct{}), make(chan struct{})
	done := e.serve(t, context.Background(), p, WithLazyMount(e.target), WithBackgroundHeld(hold),
		WithLazyComplete(func(m LazyMode) {
			if m == LazyTree {
				close(complete)
			}
		}))
	before := e.reg.Proxy.BytesServed()
	pending := snapshot(t, e.target)
	if e.s.HasLayer(e.img.diffIDs[0]) || e.reg.Proxy.BytesServed() == before {
		t.Fatal("the tree was not read from pending layers through on-demand fills")
	}
	for _, gone := range []string{"b", "c/x"} {
		if _, ok := pending[gone]; ok {
			t.Fatalf("%s is in the mount: the merge was not applied", gone)
		}
	}
	close(hold)
	<-complete
	for i, d := range e.img.diffIDs {
		if got := exportDigest(t, e.s, d); got != d {
			t.Fatalf("layer %d rebuilt to %s, want DiffID %s", i, got, d)
		}
	}
	img, err := e.s.ResolveImage(context.Background(), p.Name)
	if err != nil {
		t.Fatal(err)
	}
	co := filepath.Join(t.TempDir(), "co")
	if _, err := checkout.Checkout(context.Background(), e.s, img, co, checkout.Options{Link: checkout.LinkCopy}); err != nil {
		t.Fatal(err)
	}
	want, complete2 := snapshot(t, co), snapshot(t, e.target)
	if len(want) != 13 || want["links of a/f1"] != "a/f1 a/h" {
		t.Fatalf("the checkout is not the tree the test means: %v", want)
	}
	for _, got := range []map[string]string{pending, complete2} {
		if fmt.Sprint(got) != fmt.Sprint(want) {
			for k := range want {
				if got[k] != want[k] {
					t.Errorf("%s: mount %q, checkout %q", k, got[k], want[k])
				}
			}
			for k := range got {
				if _, ok := want[k]; !ok {
					t.Errorf("%s: in the mount only: %q", k, got[k])
				}
			}
			t.FailNow()
		}
	}
	checkFsck(t, e.s)
	// Root's mount is open to every user, with the image's modes enforced by the kernel.
	for name, want := range map[string]string{"n": "new in the second layer\n", "a/f1": "Permission denied"} {
		out, _ := testkit.Unprivileged(t, t.TempDir(), "cat", filepath.Join(e.target, name)).CombinedOutput()
		if !strings.Contains(string(out), want) {
			t.Fatalf("uid %d reading %s through root's tree mount: %q, want %q", testkit.NobodyID, name, out, want)
		}
	}
	if err := unix.Unmount(e.target, 0); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatalf("ServeLazy after its mount was unmounted: %v", err)
	}
}

// TestLazyMountTreeFetchErrorFailsOpen: a registry that fails, sends wrong bytes or stalls
// fails the open with EIO within the fill timeout, never zeros nor an endless hang; once it is back the next open fills. A
// service that ends takes its mount down.
func TestLazyMountTreeFetchErrorFailsOpen(t *testing.T) {
	e, p := newTreeEnv(t, treeLayers(t))
	ctx, stop := context.WithCancel(context.Background())
	done := e.serve(t, ctx, p, WithLazyMount(e.target), WithBackgroundHeld(make(chan struct{})), WithFillTimeout(10*time.Second))
	name := filepath.Join(e.target, "a/f1")
	for _, fault := range []registrytest.FaultKind{registrytest.ServerError, registrytest.CorruptBody, registrytest.Stall} {
		e.reg.Proxy.SetFault(registrytest.Fault{Kind: fault})
		if b, err := os.ReadFile(name); !errors.Is(err, syscall.EIO) || len(b) != 0 {
			t.Fatalf("read with fault %v: %d bytes, %v; want EIO", fault, len(b), err)
		}
	}
	e.reg.Proxy.SetFault(registrytest.Fault{})
	if b, err := os.ReadFile(name); err != nil || len(b) != 100<<10 {
		t.Fatalf("read after the registry is back: %d bytes, %v", len(b), err)
	}
	stop()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("stopped service: %v", err)
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(e.target, &sfs); err != nil || sfs.Type == 0x65735546 { // FUSE_SUPER_MAGIC
		t.Fatalf("the mount is still there after the service ended: %v", err)
	}
	checkFsck(t, e.s)
}
