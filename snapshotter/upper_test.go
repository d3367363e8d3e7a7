package snapshotter

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store/layer"
)

// TestUpperTar: an overlay upper directory becomes the OCI layer it means (whiteouts and opaque
// directories translated, overlayfs's own xattrs dropped, other xattrs, ownership and hardlinks
// kept), and store/layer.Import ingests it with file-level dedup.
func TestUpperTar(t *testing.T) {
	dir := t.TempDir()
	mk := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	mk(os.Mkdir(filepath.Join(dir, "a"), 0o750))
	mk(unix.Lsetxattr(filepath.Join(dir, "a"), "trusted.overlay.opaque", []byte("y"), 0))
	mk(os.WriteFile(filepath.Join(dir, "a", "f"), []byte("hello"), 0o640))
	mk(unix.Lsetxattr(filepath.Join(dir, "a", "f"), "user.k", []byte("v"), 0))
	mk(os.Lchown(filepath.Join(dir, "a", "f"), 1000, 1001))
	mk(os.Link(filepath.Join(dir, "a", "f"), filepath.Join(dir, "a", "g")))
	mk(os.WriteFile(filepath.Join(dir, "h"), []byte("hello"), 0o644))
	mk(os.Symlink("a/f", filepath.Join(dir, "l")))
	mk(unix.Mknod(filepath.Join(dir, "gone"), unix.S_IFCHR|0o000, 0))

	var buf bytes.Buffer
	mk(writeUpperTar(context.Background(), dir, &buf))
	got := map[string]*tar.Header{}
	var order []string
	tr := tar.NewReader(bytes.NewReader(buf.Bytes()))
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		mk(err)
		got[h.Name], order = h, append(order, h.Name)
	}
	want := []string{"a/", "a/.wh..wh..opq", "a/f", "a/g", ".wh.gone", "h", "l"}
	if len(order) != len(want) {
		t.Fatalf("entries %q, want %q", order, want)
	}
	for _, n := range want {
		if got[n] == nil {
			t.Fatalf("entries %q, want %q", order, want)
		}
	}
	if _, ok := got["a/"].PAXRecords["SCHILY.xattr.trusted.overlay.opaque"]; ok {
		t.Error("overlayfs's opaque xattr leaked into the tar")
	}
	f := got["a/f"]
	if f.Uid != 1000 || f.Gid != 1001 || f.Mode&0o777 != 0o640 || f.PAXRecords["SCHILY.xattr.user.k"] != "v" || f.Size != 5 {
		t.Errorf("a/f: uid %d gid %d mode %o xattrs %v size %d", f.Uid, f.Gid, f.Mode, f.PAXRecords, f.Size)
	}
	if g := got["a/g"]; g.Typeflag != tar.TypeLink || g.Linkname != "a/f" {
		t.Errorf("a/g: type %c link %q, want a hard link to a/f", g.Typeflag, g.Linkname)
	}
	if l := got["l"]; l.Typeflag != tar.TypeSymlink || l.Linkname != "a/f" {
		t.Errorf("l: type %c link %q", l.Typeflag, l.Linkname)
	}
	if wh := got[".wh.gone"]; wh.Typeflag != tar.TypeReg || wh.Size != 0 {
		t.Errorf(".wh.gone: type %c size %d", wh.Typeflag, wh.Size)
	}

	s := teststore.Open(t, teststore.Locked())
	im, err := layer.Import(context.Background(), s, bytes.NewReader(buf.Bytes()), layer.Options{})
	mk(err)
	if want := digest.FromBytes(buf.Bytes()); im.DiffID != want {
		t.Errorf("DiffID %s, want %s", im.DiffID, want)
	}
	if im.ObjectsWritten != 1 { // a/f, its hardlink a/g and h are one content
		t.Errorf("%d objects written, want 1", im.ObjectsWritten)
	}
}
