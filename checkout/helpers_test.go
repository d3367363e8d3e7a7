package checkout_test

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	kuratestdata "github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/treetest"
)

// testdata is testdata/REL at the module root (a missing vector fails the test).
func testdata(t testing.TB, rel string) string { return kuratestdata.Dir(t, rel) }

// referenceExtract is what GNU tar makes of the layers, one after the other, with whiteouts
// applied before each layer's entries (they concern lower layers only).
func referenceExtract(t testing.TB, dir string, tars ...[]byte) {
	t.Helper()
	for i, b := range tars {
		tr := tar.NewReader(bytes.NewReader(b))
		for {
			h, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			name := path.Clean(h.Name)
			base := path.Base(name)
			switch {
			case base == ".wh..wh..opq":
				ents, _ := os.ReadDir(filepath.Join(dir, path.Dir(name)))
				for _, e := range ents {
					os.RemoveAll(filepath.Join(dir, path.Dir(name), e.Name()))
				}
			case strings.HasPrefix(base, ".wh."):
				os.RemoveAll(filepath.Join(dir, path.Dir(name), strings.TrimPrefix(base, ".wh.")))
			case h.Typeflag != tar.TypeDir:
				// GNU tar will not replace a non-empty directory; a layer does.
				if fi, err := os.Lstat(filepath.Join(dir, name)); err == nil && fi.IsDir() {
					os.RemoveAll(filepath.Join(dir, name))
				}
			}
		}
		f := filepath.Join(t.(interface{ TempDir() string }).TempDir(), fmt.Sprintf("layer%d.tar", i))
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("tar", "-x", "-p", "--same-owner", "--numeric-owner", "--xattrs", "--xattrs-include=*",
			"--exclude=.wh.*", "-f", f, "-C", dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("reference tar -x: %v\n%s", err, out)
		}
		os.Remove(f)
	}
}

type compareOpts struct {
	hardlinks bool // compare hardlink groups
}

// compareTrees fails on every difference between the checkout and the reference.
func compareTrees(t testing.TB, got, want string, o compareOpts) {
	t.Helper()
	gt, wt := treetest.Snapshot(t, got), treetest.Snapshot(t, want)
	gn, gg, wn, wg := gt.Nodes, gt.Links, wt.Nodes, wt.Links
	delete(gn, ".") // the roots are the test's directories, not the layers'
	delete(wn, ".")
	var diffs []string
	for p, w := range wn {
		g, ok := gn[p]
		if !ok {
			diffs = append(diffs, "missing "+p)
			continue
		}
		// GNU tar leaves a directory's mtime at "now" when it creates an implicit parent in it
		// after leaving it; checkDirTimes checks directory times against the headers instead.
		if w.Type == "dir" {
			g.Mtime, w.Mtime = 0, 0
			g.Size, w.Size = 0, 0 // what a directory's size is depends on the file system's history
		}
		g.Nlink, w.Nlink = 0, 0 // the hardlink groups are compared below, when asked
		if g != w {
			diffs = append(diffs, fmt.Sprintf("%s:\n  got  %+v\n  want %+v", p, g, w))
		}
		if o.hardlinks && gg[p] != wg[p] {
			diffs = append(diffs, fmt.Sprintf("%s: hardlink group %q, want %q", p, gg[p], wg[p]))
		}
	}
	for p := range gn {
		if _, ok := wn[p]; !ok {
			diffs = append(diffs, "extra "+p)
		}
	}
	sort.Strings(diffs)
	if len(diffs) > 0 {
		if len(diffs) > 20 {
			diffs = append(diffs[:20], fmt.Sprintf("... and %d more", len(diffs)-20))
		}
		t.Fatalf("checkout differs from the reference:\n%s", strings.Join(diffs, "\n"))
	}
}

// tarOf builds a layer tar from entries (PAX format), every entry at one fixed time.
func tarOf(t testing.TB, entries ...tartest.Entry) []byte {
	return tartest.Tar(t, tartest.At(unixTime(1700000000), entries...)...)
}

var rootfsOnce struct {
	sync.Once
	path string
	err  error
}

// rootfsTar is a tar of a real root filesystem subset (/etc, /usr/bin, /usr/sbin), made once
// per test binary with GNU tar; KURA_ROOTFS_TAR names a ready one.
func rootfsTar(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("KURA_ROOTFS_TAR"); p != "" {
		return p
	}
	rootfsOnce.Do(func() {
		dir, err := os.MkdirTemp("", "kura-rootfs-")
		if err != nil {
			rootfsOnce.err = err
			return
		}
		p := filepath.Join(dir, "rootfs.tar")
		var dirs []string
		for _, d := range []string{"etc", "usr/bin", "usr/sbin"} {
			if _, err := os.Stat("/" + d); err == nil {
				dirs = append(dirs, d)
			}
		}
		args := append([]string{"-c", "--xattrs", "--numeric-owner", "-f", p, "-C", "/"}, dirs...)
		out, err := exec.Command("tar", args...).CombinedOutput()
		if err != nil && !bytes.Contains(out, []byte("socket ignored")) {
			rootfsOnce.err = fmt.Errorf("tar -c: %v: %s", err, out)
		}
		rootfsOnce.path = p
	})
	if rootfsOnce.err != nil {
		t.Fatal(rootfsOnce.err)
	}
	return rootfsOnce.path
}

// checkDirTimes checks that every directory a single-layer tar declares has the header's mtime.
func checkDirTimes(t testing.TB, root string, layerTar []byte) {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(layerTar))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeDir || path.Clean(h.Name) == "." {
			continue
		}
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(root, h.Name), &st); err != nil {
			t.Fatal(err)
		}
		if got := st.Mtim.Nano(); got != h.ModTime.UnixNano() {
			t.Errorf("directory %s: mtime %d, header says %d", h.Name, got, h.ModTime.UnixNano())
		}
	}
}
