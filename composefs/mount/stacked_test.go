package mount

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
)

// TestStackedMountMatchesSource: the image of a DeltaTree, mounted above its base's image
// (WithBase), shows exactly the newer tree, for each way a layer can differ from its base:
// contents, modes, xattrs, times and hard links changed; files, directories and whiteouts added
// and removed; a file become a directory and a directory a file. The delta holds only what
// changed. Plain and dense images alike.
func TestStackedMountMatchesSource(t *testing.T) {
	needRoot(t)
	src0, src1, objects := t.TempDir(), t.TempDir(), t.TempDir()
	makeSource(t, src0)
	for i := 0; i < 20; i++ { // files no version changes
		if err := os.MkdirAll(filepath.Join(src0, "keep"), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(src0, "keep", fmt.Sprint(i)), []byte(fmt.Sprint("unchanged file ", i, strings.Repeat(".", 100))), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if out, err := exec.Command("cp", "-a", src0+"/.", src1).CombinedOutput(); err != nil {
		t.Fatalf("cp -a: %v: %s", err, out)
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	at := func(p string) string { return filepath.Join(src1, p) }
	must(os.WriteFile(at("a/b/c/big"), []byte("changed content, longer than inline ones: 0123456789012345678901234567890123456789"), 0o640))
	must(os.Chmod(at("a/ext65"), 0o700))
	must(unix.Setxattr(at("a/inline64"), "user.small", []byte("changed"), 0))
	must(unix.Setxattr(at("a/b"), "user.dir", []byte("new"), 0))
	must(os.Remove(at("same2")))
	must(os.Remove(at("empty-dir")))
	must(os.Remove(at("a/hardlink-one"))) // one's link count falls to 1
	must(os.MkdirAll(at("new-dir/sub"), 0o750))
	must(os.WriteFile(at("new-dir/sub/file"), []byte("a new file of the new version, with more than sixty-four bytes in it"), 0o644))
	must(os.WriteFile(at("a/b/new"), []byte("n"), 0o644))
	must(os.Remove(at("fifo")))
	must(os.MkdirAll(at("fifo/inner"), 0o755)) // a file become a directory
	must(os.RemoveAll(at("a/b/c")))
	must(os.WriteFile(at("a/b/c"), []byte("a directory become a file"), 0o644))
	must(unix.Mknod(at("a/b/whiteout2"), unix.S_IFCHR|0o600, 0))
	must(os.Link(at("symlink"), at("a/symlink-link"))) // a new name for an unchanged inode

	for _, dense := range []bool{false, true} {
		var opts []composefs.Option
		if dense {
			opts = append(opts, composefs.WithDenseInodes())
		}
		tree := func(src string) *composefs.Node {
			root, err := composefs.FromDir(context.Background(), src, composefs.WithDigestStore(objects), composefs.WithHardlinks())
			must(err)
			return root
		}
		write := func(root *composefs.Node, opts ...composefs.Option) string {
			p := filepath.Join(t.TempDir(), "image.cfs")
			f, err := os.Create(p)
			must(err)
			must(composefs.WriteImage(f, root, opts...))
			must(f.Close())
			return p
		}
		base, layer := tree(src0), tree(src1)
		delta, nodes := composefs.DeltaTree(layer, base)
		if all := countNodes(layer); nodes >= all {
			t.Errorf("dense %v: the delta has %d nodes, the layer %d; want fewer", dense, nodes, all)
		}
		for _, p := range []string{"keep", "same1", "a/long-symlink", "a/b/c/big"} {
			if delta.LookupPath(p) != nil {
				t.Errorf("dense %v: the delta holds %s, unchanged or removed", dense, p)
			}
		}
		if wh := delta.LookupPath("same2"); wh == nil || !wh.HidesLower {
			t.Errorf("dense %v: same2, removed, is not hidden in the delta: %+v", dense, wh)
		}
		target := t.TempDir()
		plan, err := NewPlan(write(delta, append(opts, composefs.WithStacking())...), []string{objects}, target, WithBase(write(base, opts...)))
		must(err)
		must(Mount(context.Background(), plan))
		if n := checkMatchesSource(t, src1, target, false); n < 20 {
			t.Errorf("dense %v: only %d paths compared", dense, n)
		}
		for _, gone := range []string{"same2", "empty-dir", "a/hardlink-one", "00"} {
			if _, err := os.Lstat(filepath.Join(target, gone)); !os.IsNotExist(err) {
				t.Errorf("dense %v: %s: %v; want it hidden", dense, gone, err)
			}
		}
		must(Unmount(target))
	}
}

// TestStackingRefusesStrayWhiteouts: HidesLower belongs to 0/0 character devices of stacked
// images only.
func TestStackingRefusesStrayWhiteouts(t *testing.T) {
	for _, c := range []struct {
		node  composefs.Node
		stack bool
	}{
		{composefs.Node{Mode: composefs.ModeChar, Nlink: 1, HidesLower: true}, false},
		{composefs.Node{Mode: composefs.ModeRegular | 0o644, Nlink: 1, HidesLower: true}, true},
		{composefs.Node{Mode: composefs.ModeChar, Rdev: 5, Nlink: 1, HidesLower: true}, true},
	} {
		root := composefs.NewDir(0o755)
		n := c.node
		if err := root.AddChild("x", &n); err != nil {
			t.Fatal(err)
		}
		var opts []composefs.Option
		if c.stack {
			opts = append(opts, composefs.WithStacking())
		}
		if _, err := composefs.BuildImage(root, opts...); err == nil {
			t.Errorf("mode %o rdev %d stacked %v: written; want refused", c.node.Mode, c.node.Rdev, c.stack)
		}
	}
}

func countNodes(n *composefs.Node) int {
	k := 1
	for _, c := range n.Children() {
		k += countNodes(c)
	}
	return k
}
