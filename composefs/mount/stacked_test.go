package mount

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/internal/testkit"
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
	for i := 0; i < 200; i++ { // files no version changes but the first
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
	must(os.WriteFile(at("keep/0"), []byte("new content at the same path, more than sixty-four bytes long ........"), 0o644))

	for _, dense := range []bool{false, true} {
		var opts []composefs.Option
		if dense {
			var u unix.Utsname
			must(unix.Uname(&u))
			var major, minor int
			fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor)
			if major < 6 || major == 6 && minor < 15 {
				testkit.Skip(t, "dense images need Linux 6.15 (compact inodes' mtime)")
			}
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
		if all := composefs.CountNodes(layer); nodes >= all {
			t.Errorf("dense %v: the delta has %d nodes, the layer %d; want fewer", dense, nodes, all)
		}
		for _, p := range []string{"keep/1", "same1", "a/long-symlink"} {
			if delta.LookupPath(p) != nil {
				t.Errorf("dense %v: the delta holds %s, unchanged", dense, p)
			}
		}
		if delta.LookupPath("keep/0") == nil {
			t.Errorf("dense %v: the delta lacks keep/0, changed", dense)
		}
		if wh := delta.LookupPath("same2"); wh == nil || !wh.HidesLower {
			t.Errorf("dense %v: same2, removed, is not hidden in the delta: %+v", dense, wh)
		}
		target := t.TempDir()
		t.Cleanup(func() { unix.Unmount(target, unix.MNT_DETACH) }) // a failed check leaves it
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
		checkDistinctInodes(t, src1, target)
		xino := false
		for _, line := range strings.Split(string(mustRead(t, "/proc/self/mountinfo")), "\n") {
			if f := strings.Fields(line); len(f) > 4 && f[4] == target {
				xino = strings.Contains(line, ",xino=on")
			}
		}
		if !xino {
			t.Errorf("dense %v: the stacked overlay is not mounted with xino=on: its files' inode numbers may meet", dense)
		}
		must(Unmount(target))
	}
}

// checkDistinctInodes checks, through an overlay stacked on the mount at target (as a
// container's is), that the files of src with one name each show distinct inode numbers: the
// overlay above shows one st_dev for files from the image and from its base, whose EROFS inode
// numbers overlap.
func checkDistinctInodes(t *testing.T, src, target string) {
	t.Helper()
	up, work, top := t.TempDir(), t.TempDir(), t.TempDir()
	if err := unix.Mount("overlay", top, "overlay", 0, "lowerdir="+target+",upperdir="+up+",workdir="+work); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(top, unix.MNT_DETACH)
	seen := map[[2]uint64]string{}
	err := filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		var ss, ms unix.Stat_t
		if err := unix.Lstat(p, &ss); err != nil || ss.Nlink > 1 || ss.Mode&unix.S_IFMT == unix.S_IFCHR && ss.Rdev == 0 {
			return err // hard links share an inode; whiteouts hide themselves from the overlay above
		}
		if err := unix.Lstat(filepath.Join(top, rel), &ms); err != nil {
			t.Errorf("%s through the overlay above: %v", rel, err)
			return nil
		}
		k := [2]uint64{ms.Dev, ms.Ino}
		if other, ok := seen[k]; ok {
			t.Errorf("%s and %s show one inode (%d, %d) through the overlay above", rel, other, ms.Dev, ms.Ino)
		}
		seen[k] = rel
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(seen) < 200 {
		t.Fatalf("only %d files compared", len(seen))
	}
}

// TestStackingRefuses: HidesLower belongs to 0/0 character devices of stacked images only; a
// stacked image's file with content has it inline or names its object (else the overlay would
// read the file below it).
func TestStackingRefuses(t *testing.T) {
	for _, c := range []struct {
		node  composefs.Node
		stack bool
	}{
		{composefs.Node{Mode: composefs.ModeChar, Nlink: 1, HidesLower: true}, false},
		{composefs.Node{Mode: composefs.ModeRegular | 0o644, Nlink: 1, HidesLower: true}, true},
		{composefs.Node{Mode: composefs.ModeChar, Rdev: 5, Nlink: 1, HidesLower: true}, true},
		{composefs.Node{Mode: composefs.ModeRegular | 0o644, Nlink: 1, Size: 100}, true},
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
