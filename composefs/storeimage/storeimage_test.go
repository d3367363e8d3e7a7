package storeimage

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/internal/testkit/treetest"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
)

var mtime = time.Date(2025, 3, 4, 5, 6, 7, 123456789, time.UTC)

type ent = tartest.Entry

func reg(name, data string, mode int64) ent { return tartest.File(name, data).Mode(mode) }
func dir(name string, mode int64) ent       { return tartest.Dir(name).Mode(mode) }
func other(typ byte, name, link string) ent {
	return ent{Header: tar.Header{Name: name, Typeflag: typ, Mode: 0o644, Linkname: link}}
}

// mkTar writes a PAX tar of ents, all at mtime.
func mkTar(t *testing.T, ents ...ent) []byte { return tartest.Tar(t, tartest.At(mtime, ents...)...) }

var big = strings.Repeat("a line of content that makes the file larger than the inline limit\n", 300)

// layers of a test image: the second one whites out, makes a directory opaque and replaces things.
func testLayers(t *testing.T) [][]byte {
	x := reg("usr/bin/capable", big+"cap", 0o4755)
	x.Header.Uid, x.Header.Gid = 1000, 70000
	x.Header.PAXRecords = map[string]string{"SCHILY.xattr.user.comment": "hello"}
	dev := other(tar.TypeChar, "dev/null", "")
	dev.Header.Devmajor, dev.Header.Devminor, dev.Header.Mode = 1, 3, 0o666
	l1 := mkTar(t,
		dir("etc/", 0o755), reg("etc/hostname", "kura\n", 0o644), reg("etc/old.conf", big, 0o600),
		dir("etc/sub/", 0o700), reg("etc/sub/deep", "deep\n", 0o644),
		dir("usr/", 0o755), dir("usr/bin/", 0o755), reg("usr/bin/tool", big+"tool", 0o755), x,
		other(tar.TypeLink, "usr/bin/tool-hard", "usr/bin/tool"), other(tar.TypeSymlink, "usr/bin/link", "tool"),
		reg("usr/bin/removed", big+"removed", 0o644), reg("usr/empty", "", 0o644),
		dir("dev/", 0o755), dev, other(tar.TypeFifo, "dev/fifo", ""),
		dir("var/", 0o755), dir("var/lib/", 0o755), reg("var/lib/becomes-dir", "x", 0o644),
	)
	l2 := mkTar(t,
		dir("etc/", 0o750), reg("etc/.wh..wh..opq", "", 0o644), reg("etc/new.conf", big+"new", 0o640),
		other(tar.TypeChar, "usr/bin/.wh.removed", ""),
		reg("usr/bin/tool", big+"tool v2", 0o755),
		dir("var/lib/becomes-dir/", 0o711), reg("var/lib/becomes-dir/inside", "inside\n", 0o644),
	)
	return [][]byte{l1, l2}
}

// importImage stores an image of uncompressed tar layers named "test" (teststore: package pull,
// which the OCI importer uses, imports this package).
func importImage(t *testing.T, s *store.Store, layers [][]byte) store.Image {
	t.Helper()
	return teststore.Named(t, s, "test", layers...)
}

func TestTreeAppliesWhiteoutsAndOpaqueDirs(t *testing.T) {
	s := teststore.Open(t)
	img := importImage(t, s, testLayers(t))
	root, err := Tree(context.Background(), s, img)
	if err != nil {
		t.Fatal(err)
	}
	for _, gone := range []string{"/etc/hostname", "/etc/old.conf", "/etc/sub", "/usr/bin/removed", "/etc/.wh..wh..opq", "/usr/bin/.wh.removed"} {
		if root.LookupPath(gone) != nil {
			t.Errorf("%s is still there", gone)
		}
	}
	for path, want := range map[string]uint32{"/etc/new.conf": unix.S_IFREG, "/var/lib/becomes-dir/inside": unix.S_IFREG,
		"/usr/bin/link": unix.S_IFLNK, "/dev/null": unix.S_IFCHR, "/dev/fifo": unix.S_IFIFO} {
		n := root.LookupPath(path)
		if n == nil || n.Type() != want {
			t.Errorf("%s: %+v, want type %o", path, n, want)
		}
	}
	if n := root.LookupPath("/etc"); n.Mode&0o7777 != 0o750 {
		t.Errorf("/etc mode %o, want the upper layer's 750", n.Mode)
	}
	tool, hard := root.LookupPath("/usr/bin/tool"), root.LookupPath("/usr/bin/tool-hard")
	if hard.Target() == tool {
		t.Error("the hard link follows the replaced file; it must keep the lower layer's content")
	}
	if tool.Digest == nil || !strings.HasPrefix(tool.Payload, tool.Payload[:2]+"/") {
		t.Errorf("large file without object redirect: %+v", tool)
	}
	if n := root.LookupPath("/usr/bin/capable"); n.Mode&0o7777 != 0o4755 || n.UID != 1000 || n.GID != 70000 {
		t.Errorf("capable: mode %o owner %d:%d", n.Mode, n.UID, n.GID)
	}
	var img1 bytes.Buffer
	if err := composefs.WriteImage(&img1, root); err != nil {
		t.Fatal(err)
	}
	var img2 bytes.Buffer
	if err := Build(context.Background(), s, img, &img2); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(img1.Bytes(), img2.Bytes()) {
		t.Error("two builds of the same image differ")
	}
	// The cached image is the same build, and gc keeps it while the image lives.
	p, err := Ensure(context.Background(), s, img)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(context.Background()); err != nil {
		t.Fatal(err)
	}
	if cached, err := os.ReadFile(p); err != nil || !bytes.Equal(cached, img2.Bytes()) {
		t.Fatalf("cached composefs image after gc: %v", err)
	}
}

// walk snapshots what the mount and the checkout must agree on: every path but the root (the
// mount point), user xattrs only (overlay adds its own), no directory sizes (they differ by file
// system), and the hard-link groups.
func walk(t *testing.T, root string) (map[string]treetest.Node, map[string]string) {
	t.Helper()
	tr := treetest.Snapshot(t, root, treetest.XattrPrefix("user."))
	delete(tr.Nodes, ".")
	for p, n := range tr.Nodes {
		if n.Type == "dir" {
			n.Size = 0
			tr.Nodes[p] = n
		}
	}
	return tr.Nodes, tr.Links
}

// TestMountEqualsCheckout mounts the composefs image of a stored image for real, as mkcomposefs
// lays it out and with dense inodes, and compares the whole tree with kura checkout of the same
// image: mtimes, owners, modes, contents (through the redirects) and hard links.
func TestMountEqualsCheckout(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "mounting needs root")
	}
	ctx := context.Background()
	s := teststore.Open(t)
	layers := testLayers(t)
	b, err := os.ReadFile(testdata.Dir(t, "zstd-chunked", "real.tar"))
	if err != nil {
		t.Fatal(err)
	}
	layers = append([][]byte{b}, layers...)
	img := importImage(t, s, layers)
	co := filepath.Join(t.TempDir(), "co")
	if _, err := checkout.Checkout(ctx, s, img, co, checkout.Options{Link: checkout.LinkCopy}); err != nil {
		t.Fatal(err)
	}
	want, wantLinks := walk(t, co)
	cfs, err := Ensure(ctx, s, img)
	if err != nil {
		t.Fatal(err)
	}
	dense := filepath.Join(t.TempDir(), "dense.cfs")
	root, err := Tree(ctx, s, img)
	if err != nil {
		t.Fatal(err)
	}
	denseImg, err := composefs.BuildImage(root, composefs.WithDenseInodes())
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dense, denseImg, 0o444); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cfs); err != nil || int64(len(denseImg)) >= fi.Size() {
		t.Errorf("dense image of %d bytes, mkcomposefs's layout %v: want it smaller", len(denseImg), fi)
	}
	for _, image := range []string{cfs, dense} {
		target := t.TempDir()
		plan, err := mount.NewPlan(image, []string{s.ObjectsDir()}, target)
		if err != nil {
			t.Fatal(err)
		}
		if err := mount.Mount(ctx, plan); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { mount.Unmount(target) })
		got, gotLinks := walk(t, target)
		if len(got) != len(want) {
			t.Errorf("%s: mount has %d paths, checkout %d", image, len(got), len(want))
		}
		for p, w := range want {
			if g, ok := got[p]; !ok {
				t.Errorf("%s: %s: missing in the mount", image, p)
			} else if g != w {
				t.Errorf("%s: %s: mount %+v, checkout %+v", image, p, g, w)
			}
		}
		for p := range got {
			if _, ok := want[p]; !ok {
				t.Errorf("%s: %s: only in the mount", image, p)
			}
		}
		if fmt.Sprint(gotLinks) != fmt.Sprint(wantLinks) {
			t.Errorf("%s: hard links: mount %v, checkout %v", image, gotLinks, wantLinks)
		}
		if _, ok := got["usr/bin/removed"]; ok {
			t.Errorf("%s: a whited-out file shows through the mount", image)
		}
	}
}

// TestTreeWithoutDigests: a tree built through WithoutDigests gives no file an fs-verity digest
// and still names every file's object; the same image built from the store itself digests them.
func TestTreeWithoutDigests(t *testing.T) {
	s := teststore.Open(t, teststore.With(store.WithVerity()))
	img := importImage(t, s, testLayers(t))
	count := func(root *composefs.Node) (files, digests int) {
		walkRegular(root, func(n *composefs.Node) {
			if n.Payload != "" {
				files++
				if n.Digest != nil {
					digests++
				}
			}
		})
		return files, digests
	}
	with, err := Tree(context.Background(), s, img)
	if err != nil {
		t.Fatal(err)
	}
	without, err := Tree(context.Background(), WithoutDigests(s), img)
	if err != nil {
		t.Fatal(err)
	}
	if f, d := count(with); f == 0 || d != f {
		t.Fatalf("from the store: %d of %d files carry a digest; want all", d, f)
	}
	if f, d := count(without); f == 0 || d != 0 {
		t.Fatalf("without digests: %d of %d files carry a digest; want none", d, f)
	}
	// Entries given over keep the wrapped store's choice of digests.
	entries, err := s.LayerEntries(context.Background(), img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	given, err := Tree(context.Background(), WithEntries(WithoutDigests(s), map[digest.Digest][]layerfs.Entry{img.Layers[0]: entries}), img)
	if err != nil {
		t.Fatal(err)
	}
	if f, d := count(given); f == 0 || d != 0 {
		t.Fatalf("entries given, without digests: %d of %d files carry a digest; want none", d, f)
	}
}

// noInline is a store whose images inline nothing (a pending lazy pull's).
type noInline struct{ Store }

func (noInline) OmitInline() bool { return true }

// TestTreeWithoutInline: through an InlineOmitter (WithEntries keeping the choice) a file of
// 1..64 bytes names its object instead of carrying its bytes; from the store itself it is inline.
func TestTreeWithoutInline(t *testing.T) {
	s := teststore.Open(t)
	img := importImage(t, s, testLayers(t))
	count := func(root *composefs.Node) (small, inline int) {
		walkRegular(root, func(n *composefs.Node) {
			if n.Size > 0 && n.Size <= composefs.InlineThreshold {
				small++
				if n.Content != nil && n.Payload == "" {
					inline++
				}
			}
		})
		return small, inline
	}
	with, err := Tree(context.Background(), s, img)
	if err != nil {
		t.Fatal(err)
	}
	if n, in := count(with); n == 0 || in != n {
		t.Fatalf("from the store: %d of %d small files inline; want all", in, n)
	}
	entries, err := s.LayerEntries(context.Background(), img.Layers[0])
	if err != nil {
		t.Fatal(err)
	}
	without, err := Tree(context.Background(), WithEntries(noInline{s}, map[digest.Digest][]layerfs.Entry{img.Layers[0]: entries}), img)
	if err != nil {
		t.Fatal(err)
	}
	if n, in := count(without); n == 0 || in != 0 {
		t.Fatalf("without inlining: %d of %d small files inline; want none", in, n)
	}
}

// walkRegular calls fn on every regular file of the tree under n.
func walkRegular(n *composefs.Node, fn func(*composefs.Node)) {
	if n.Mode&unix.S_IFMT == unix.S_IFREG {
		fn(n)
	}
	for _, c := range n.Children() {
		walkRegular(c, fn)
	}
}
