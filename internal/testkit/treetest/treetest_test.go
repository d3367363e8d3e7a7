package treetest_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/treetest"
)

func write(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // whatever the umask
		t.Fatal(err)
	}
}

// A snapshot records type, mode, size, content, link target and hard-link groups, and String
// changes with each of them but not with times.
func TestSnapshot(t *testing.T) {
	root := t.TempDir()
	write(t, filepath.Join(root, "a"), "alpha", 0o640)
	if err := os.Link(filepath.Join(root, "a"), filepath.Join(root, "b")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("a", filepath.Join(root, "l")); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(root, "d"), 0o700); err != nil {
		t.Fatal(err)
	}
	tr := treetest.Snapshot(t, root)
	a, l, d := tr.Nodes["a"], tr.Nodes["l"], tr.Nodes["d"]
	if a.Type != "reg" || a.Mode != 0o640 || a.Size != 5 || a.Nlink != 2 ||
		a.Content != "8ed3f6ad685b959ead7022518e1af76cd816f8e8ec7ccdda1ed4018e8f2223f8" {
		t.Errorf("a: %+v", a)
	}
	if l.Type != "symlink" || l.Link != "a" || l.Mode != 0 {
		t.Errorf("l: %+v", l)
	}
	if d.Type != "dir" || d.Mode != 0o700 || d.Nlink != 0 {
		t.Errorf("d: %+v", d)
	}
	if _, ok := tr.Nodes["."]; !ok {
		t.Error("the root is not recorded")
	}
	if tr.Links["a"] != "a,b" || tr.Links["b"] != "a,b" || tr.Links["l"] != "" {
		t.Errorf("hard-link groups %v", tr.Links)
	}

	before := tr.String()
	if err := unix.Utimes(filepath.Join(root, "a"), []unix.Timeval{{Sec: 1}, {Sec: 1}}); err != nil {
		t.Fatal(err)
	}
	if after := treetest.Snapshot(t, root).String(); after != before {
		t.Errorf("a time changed the rendering:\n%s\n%s", before, after)
	}
	for _, change := range []func(){
		func() { write(t, filepath.Join(root, "a"), "alphA", 0o640) },
		func() { os.Chmod(filepath.Join(root, "d"), 0o755) },
		func() { os.Remove(filepath.Join(root, "l")); os.Symlink("b", filepath.Join(root, "l")) },
		func() { write(t, filepath.Join(root, "d", "new"), "", 0o644) },
	} {
		change()
		after := treetest.Snapshot(t, root).String()
		if after == before {
			t.Errorf("a change left the rendering as it was:\n%s", after)
		}
		before = after
	}
}

// XattrPrefix keeps only the xattrs in the namespace asked for.
func TestXattrPrefix(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "trusted.* xattrs need root")
	}
	root := t.TempDir()
	p := filepath.Join(root, "f")
	write(t, p, "x", 0o644)
	if err := unix.Lsetxattr(p, "user.kura", []byte("v"), 0); err != nil {
		t.Fatalf("setting a user xattr: %v", err)
	}
	if err := unix.Lsetxattr(p, "trusted.kura", []byte("w"), 0); err != nil {
		t.Fatalf("setting a trusted xattr: %v", err)
	}
	all := treetest.Snapshot(t, root).Nodes["f"].Xattrs
	user := treetest.Snapshot(t, root, treetest.XattrPrefix("user.")).Nodes["f"].Xattrs
	if !strings.Contains(all, "trusted.kura=77") || !strings.Contains(all, "user.kura=76") {
		t.Errorf("all xattrs %q", all)
	}
	if user != "user.kura=76" {
		t.Errorf("user xattrs %q, want user.kura=76", user)
	}
}
