package checkout_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestHardlinkCheckoutWriteDoesNotReachStore (issue 13, case 3): a write into a hardlink
// checkout of image A must not reach a later hardlink checkout of image B that shares the file.
// The cheap check catches an append (size and mtime change) and a chmod; a write that restores
// size and mtime is left to fsck --deep, which finds and removes the changed variant.
func TestHardlinkCheckoutWriteDoesNotReachStore(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(filepath.Join(root, "store")))
	const want = "shared bytes of the image\n"
	imgA := teststore.Image(t, s, tarOf(t, tartest.File("etc/shared", want), tartest.File("etc/mode", "m"), tartest.File("a-only", "a")))
	imgB := teststore.Image(t, s, tarOf(t, tartest.File("etc/shared", want), tartest.File("etc/mode", "m"), tartest.File("b-only", "b")))
	link := func(img store.Image, dir string) (string, checkout.Stats) {
		t.Helper()
		out := filepath.Join(root, dir)
		st, err := checkout.Checkout(ctx, s, img, out, checkout.Options{Link: checkout.LinkHardlink})
		if err != nil {
			t.Fatal(err)
		}
		return out, st
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	a, _ := link(imgA, "a")
	f, err := os.OpenFile(filepath.Join(a, "etc/shared"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("x\n")
	f.Close()
	if err := os.Chmod(filepath.Join(a, "etc/mode"), 0o777); err != nil {
		t.Fatal(err)
	}
	b, st := link(imgB, "b")
	if got := read(filepath.Join(b, "etc/shared")); got != want {
		t.Fatalf("checkout B got %q: a write through checkout A reached it", got)
	}
	if fi, err := os.Stat(filepath.Join(b, "etc/mode")); err != nil || fi.Mode().Perm() != 0o644 {
		t.Fatalf("checkout B: etc/mode %v %v: a chmod through checkout A reached it", fi.Mode(), err)
	}
	if st.VariantsReplaced != 2 || st.Linked == 0 {
		t.Fatalf("stats %+v: want 2 variants replaced", st)
	}
	if read(filepath.Join(a, "etc/shared")) != want+"x\n" {
		t.Fatal("checkout A lost its own write")
	}

	// A same-size overwrite with the mtime put back passes the cheap check; fsck --deep finds
	// it, repair removes the variant, and the next checkout gets the image's bytes.
	p := filepath.Join(b, "etc/shared")
	fi, _ := os.Stat(p)
	if err := os.WriteFile(p, []byte(strings.ToUpper(want)), 0); err != nil {
		t.Fatal(err)
	}
	mt := fi.ModTime()
	if err := os.Chtimes(p, mt, mt); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.Fsck(ctx, false); err != nil || !rep.Clean() {
		t.Fatalf("plain fsck (re-hashes objects, sizes variants): %v %v", rep.Problems, err)
	}
	rep, err := s.FsckWith(ctx, store.FsckOptions{Deep: true})
	if err != nil || len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "variant") {
		t.Fatalf("fsck --deep: %v %v", rep.Problems, err)
	}
	if rep, err := s.FsckWith(ctx, store.FsckOptions{Deep: true, Repair: true}); err != nil || rep.Repaired != 1 {
		t.Fatalf("fsck --deep --repair: %+v %v", rep, err)
	}
	c, _ := link(imgA, "c")
	if got := read(filepath.Join(c, "etc/shared")); got != want {
		t.Fatalf("checkout after repair got %q", got)
	}
	if rep, err := s.FsckWith(ctx, store.FsckOptions{Deep: true}); err != nil || !rep.Clean() {
		t.Fatalf("fsck --deep after repair: %v %v", rep.Problems, err)
	}
}

// TestHardlinkCheckoutNeverLinksObjects: no file of a hardlink checkout shares an inode with a
// store object (a write through it would change the object every image and mount reads).
func TestHardlinkCheckoutNeverLinksObjects(t *testing.T) {
	root := t.TempDir()
	s := teststore.Open(t, teststore.At(filepath.Join(root, "store")))
	img := teststore.Image(t, s, tarOf(t, tartest.File("f", "content"), tartest.File("g", "other")))
	out := filepath.Join(root, "out")
	if _, err := checkout.Checkout(context.Background(), s, img, out, checkout.Options{Link: checkout.LinkHardlink}); err != nil {
		t.Fatal(err)
	}
	objects := map[uint64]bool{}
	filepath.WalkDir(s.ObjectsDir(), func(p string, d os.DirEntry, err error) error {
		var st unix.Stat_t
		if err == nil && !d.IsDir() && unix.Lstat(p, &st) == nil {
			objects[st.Ino] = true
		}
		return err
	})
	for _, name := range []string{"f", "g"} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(out, name), &st); err != nil {
			t.Fatal(err)
		}
		if objects[st.Ino] {
			t.Errorf("%s is hardlinked to a store object", name)
		}
		if st.Nlink != 2 {
			t.Errorf("%s has %d links, want 2 (itself and its variant)", name, st.Nlink)
		}
	}
}
