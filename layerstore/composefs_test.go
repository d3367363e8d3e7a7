package layerstore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/verity"
)

func TestCheckKernel(t *testing.T) {
	for release, ok := range map[string]bool{
		"6.18.44-fc-v1300": true, "6.7.0": true, "7.0.1": true,
		"6.6.30-amd64": false, "5.10.0-28-amd64": false, "": false, "x.y": false,
	} {
		err := checkKernel(release)
		if (err == nil) != ok || err != nil && !errors.Is(err, errdefs.ErrUnsupported) {
			t.Errorf("checkKernel(%q) = %v; want ok %v", release, err, ok)
		}
	}
	for release, dense := range map[string]bool{"6.18.44-fc-v1300": true, "6.15.0": true, "7.0": true, "6.14.9": false, "": false} {
		if got := kernelAtLeast(release, denseKernel); got != dense {
			t.Errorf("dense images on %q: %v; want %v", release, got, dense)
		}
	}
}

// TestComposefsLayer: with --diff composefs, the second layer is a composefs mount showing its
// files, its whiteout and opaque directory as the overlay stacked on it reads them (escaped
// overlay xattrs made visible), recorded as a mount use that gc honours; a second lookup
// reuses the mount.
func TestComposefsLayer(t *testing.T) {
	if unix.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	f := newFixtureWith(t, Options{Diff: DiffComposefs})
	ctx := context.Background()
	l, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[1].Digest)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Unmount(l.Diff, syscall.MNT_DETACH) })
	if _, ok, err := mount.Find(l.Diff); err != nil || !ok {
		t.Fatalf("%s is not a composefs mount: %v", l.Diff, err)
	}
	// On this machine's kernel the image has dense inodes, under its own name.
	if want := kernelAtLeast(kernelRelease(), denseKernel); f.ls.dense != want {
		t.Errorf("dense images %v on %s; want %v", f.ls.dense, kernelRelease(), want)
	}
	if _, err := os.Stat(filepath.Join(f.ls.opts.State, dirComposefs, l.DiffID.Encoded()+imageSuffix(f.ls.dense))); err != nil {
		t.Errorf("the layer's image: %v", err)
	}
	checkFile(t, filepath.Join(l.Diff, "d/new"), "new in layer 2")
	checkFile(t, filepath.Join(l.Diff, "etc/os-release"), "ID=top\n")
	buf := make([]byte, 8)
	if _, err := unix.Lgetxattr(filepath.Join(l.Diff, "a/x"), "trusted.overlay.whiteout", buf); err != nil {
		t.Errorf("a/x carries no trusted.overlay.whiteout for the overlay above: %v", err)
	}
	if n, err := unix.Lgetxattr(filepath.Join(l.Diff, "d"), "trusted.overlay.opaque", buf); err != nil || string(buf[:n]) != "y" {
		t.Errorf("d: trusted.overlay.opaque = %q, %v; want y", buf[:n], err)
	}
	again, err := f.ls.Lookup(ctx, f.ref, f.img.Descs[1].Digest)
	if err != nil || again.Diff != l.Diff {
		t.Errorf("second lookup: %v, %v; want the same mount", again, err)
	}
	uses, err := f.s.Uses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(uses) != 1 || uses[0].Kind != store.UseMount || uses[0].MountID == 0 {
		t.Fatalf("uses %+v; want one mount use with its mount ID", uses)
	}
	dropNamesAndGC(t, f)
	if !f.s.HasLayer(l.DiffID) {
		t.Fatalf("gc removed layer %s, which a layer store mount serves", l.DiffID)
	}
}

// TestDiffModes: auto is composefs on this kernel if it allows, else checkout; an unknown mode is
// refused.
func TestDiffModes(t *testing.T) {
	want := DiffComposefs
	if checkKernel(kernelRelease()) != nil {
		want = DiffCheckout
	}
	ls, err := New(nil, nil, Options{State: t.TempDir()})
	if err != nil || ls.opts.Diff != want {
		t.Errorf("default diff mode on %s: %v, %v; want %s", kernelRelease(), ls, err, want)
	}
	if _, err := New(nil, nil, Options{State: t.TempDir(), Diff: "tarball"}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("diff mode tarball: %v; want invalid", err)
	}
}

// TestSetLazyNeedsComposefs: a pending layer is a composefs mount; a checkout layer store
// refuses lazy pulls rather than serve them some other way.
func TestSetLazyNeedsComposefs(t *testing.T) {
	ls, err := New(nil, nil, Options{State: t.TempDir(), Diff: DiffCheckout})
	if err != nil {
		t.Fatal(err)
	}
	if err := ls.SetLazy(nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("SetLazy on a checkout layer store: %v; want ErrInvalid", err)
	}
}

// TestImageWithoutDigests: a per-layer tree without fs-verity digests still redirects every file to its
// object, and its image is smaller (the metacopy xattr becomes one shared value).
func TestImageWithoutDigests(t *testing.T) {
	build := func(drop bool) ([]byte, *composefs.Node) {
		root := composefs.NewDir(0o755)
		for i := 0; i < 200; i++ {
			d := verity.Digest{byte(i), 1}
			f := &composefs.Node{Mode: composefs.ModeRegular | 0o644, Nlink: 1, Size: 4096, Payload: fmt.Sprintf("%02x/%062x", i, i)}
			if !drop {
				f.Digest = &d
			}
			if err := root.AddChild(fmt.Sprintf("f%03d", i), f); err != nil {
				t.Fatal(err)
			}
		}
		var buf bytes.Buffer
		if err := composefs.WriteImage(&buf, root); err != nil {
			t.Fatal(err)
		}
		back, err := composefs.ReadImage(buf.Bytes())
		if err != nil {
			t.Fatal(err)
		}
		return buf.Bytes(), back
	}
	with, _ := build(false)
	without, back := build(true)
	if len(without) >= len(with) {
		t.Errorf("image without digests %d bytes, with %d; want smaller", len(without), len(with))
	}
	for i, f := range back.Children() {
		if f.Digest != nil || f.Payload != fmt.Sprintf("%02x/%062x", i, i) {
			t.Fatalf("%s: digest %v, payload %q; want no digest and its object", f.Name(), f.Digest, f.Payload)
		}
	}
}

// TestTreeWhiteoutsInOpaqueDir: a whiteout inside a directory the same layer makes opaque, named
// or a 0/0 character device, is left out of the composefs tree (the directory hides everything below it already): written,
// it would make the writer mark the directory as holding whiteouts with the xattr that carries
// its opaque mark, and the directory would no longer hide the layers below. A whiteout
// elsewhere stays.
func TestTreeWhiteoutsInOpaqueDir(t *testing.T) {
	root := composefs.NewDir(0o755)
	d := composefs.NewDir(0o755)
	// A 0/0 character device the tar has as such, which overlayfs also takes for a whiteout.
	if err := errors.Join(root.AddChild("d", d), d.AddChild("c", &composefs.Node{Mode: composefs.ModeChar, Nlink: 1})); err != nil {
		t.Fatal(err)
	}
	entries := []layerfs.Entry{{Name: "d/.wh.x"}, {Name: "d/.wh..wh..opq"}, {Name: "e/.wh.y"}}
	if err := treeWhiteouts(root, entries); err != nil {
		t.Fatal(err)
	}
	if v, ok := d.Xattr(xattrOpaque); !ok || string(v) != "y" {
		t.Errorf("d: opaque %q %v; want y", v, ok)
	}
	if len(d.Children()) != 0 {
		t.Errorf("d holds %d entries; want its whiteouts left out", len(d.Children()))
	}
	if wh := root.LookupPath("e/y"); wh == nil || wh.Mode != composefs.ModeChar {
		t.Errorf("e/y: %+v; want a whiteout", wh)
	}
	img, err := composefs.BuildImage(root, composefs.WithMaxVersion(1))
	if err != nil {
		t.Fatal(err)
	}
	back, err := composefs.ReadImage(img)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := back.LookupPath("d").Xattr(xattrOpaque); !ok || string(v) != "y" {
		t.Errorf("d in the image: opaque %q %v; want y", v, ok)
	}
}
