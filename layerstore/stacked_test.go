package layerstore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/imagetest"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/internal/testkit/treetest"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// versionTar is the one layer of version v of an image: 60 files that every version shares, and
// one that each version changes, one that only version 1 has and one that only later ones have.
func versionTar(t *testing.T, v int) []byte {
	var es []tartest.Entry
	es = append(es, tartest.Dir("usr/"), tartest.Dir("usr/lib/"))
	for i := 0; i < 60; i++ {
		es = append(es, tartest.File(fmt.Sprintf("usr/lib/f%02d", i), fmt.Sprint("shared by every version: ", i, strings.Repeat(".", 80))))
	}
	es = append(es, tartest.File("usr/lib/version", fmt.Sprint("version ", v, strings.Repeat("!", 80))))
	if v == 1 {
		es = append(es, tartest.File("usr/lib/only-v1", "gone in later versions"))
	} else {
		es = append(es, tartest.File("usr/new", "only in later versions"))
	}
	return tartest.Tar(t, tartest.At(time.Unix(1700000000, 0), es...)...)
}

// diffShows snapshots what a layer's diff shows. A directory's size is left out: overlayfs shows
// a merged directory's size from the image above.
func diffShows(t *testing.T, dir string) treetest.Tree {
	tr := treetest.Snapshot(t, dir)
	for p, n := range tr.Nodes {
		if n.Type == "dir" {
			n.Size = 0
			tr.Nodes[p] = n
		}
	}
	return tr
}

// checkSameTree fails the test at the paths where two snapshots differ.
func checkSameTree(t *testing.T, what string, got, want treetest.Tree) {
	t.Helper()
	if len(got.Nodes) < 60 {
		t.Fatalf("%s: only %d paths", what, len(got.Nodes))
	}
	for p, w := range want.Nodes {
		if g, ok := got.Nodes[p]; !ok || g != w {
			t.Errorf("%s: %s is %+v; want %+v", what, p, g, w)
		}
	}
	for p := range got.Nodes {
		if _, ok := want.Nodes[p]; !ok {
			t.Errorf("%s: %s is there; want it absent", what, p)
		}
	}
	if !reflect.DeepEqual(got.Links, want.Links) {
		t.Errorf("%s: hard links %v; want %v", what, got.Links, want.Links)
	}
}

// TestStackedLayerImages: the layer of a second version, pulled as an update of the first's,
// gets an image of what it changes stacked above the first's full image; its diff shows the same
// tree as a full image of it does. A server started again mounts it the same way, and stacks a
// third version above the first's image, which it did not write, once it has checked that it
// builds that very file. A stacked image that cannot be mounted gives way to a full one. Unmounting
// the first version's layer keeps its image while the second's stands on it; unmounting the
// second removes both. A stacked image whose base image went missing gives way to a full one.
func TestStackedLayerImages(t *testing.T) {
	if unix.Geteuid() != 0 {
		testkit.Skip(t, "composefs mounts need root")
	}
	ctx := context.Background()
	reg := registrytest.New(t)
	v1, v2, v3 := imagetest.Chunked(t, versionTar(t, 1)), imagetest.Chunked(t, versionTar(t, 2)), imagetest.Chunked(t, versionTar(t, 3))
	v1.Push(t, reg, "test/stacked", "v1")
	v2.Push(t, reg, "test/stacked", "v2")
	v3.Push(t, reg, "test/stacked", "v3")
	s := teststore.Open(t)
	client := registry.New(registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password))))
	state := filepath.Join(filepath.Dir(s.Root()), "state-"+filepath.Base(s.Root()))
	testkit.DetachMountsUnder(t, state)
	ls, err := New(s, &registryResolver{s: s, client: client}, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	if !ls.dense {
		testkit.Skip(t, "kernel %s: no dense images (Linux 6.15), so nothing is stacked", kernelRelease())
	}
	lookup := func(ls *Layers, tag string, img *imagetest.Image) *Layer {
		t.Helper()
		l, err := ls.Lookup(ctx, reg.Host+"/test/stacked:"+tag, img.Descs[0].Digest)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := ls.DiffTarget(ctx, l); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unix.Unmount(l.Diff, unix.MNT_DETACH) })
		return l
	}
	l1 := lookup(ls, "v1", v1)
	l2 := lookup(ls, "v2", v2)
	d1, d2 := v1.DiffIDs[0], v2.DiffIDs[0]
	stacked := ls.stackedPath(d2, d1)
	if _, err := os.Stat(stacked); err != nil {
		t.Fatalf("v2's layer has no image stacked above v1's: %v", err)
	}
	if _, err := os.Stat(ls.imagePath(d2)); err == nil {
		t.Errorf("v2's layer has a full image too")
	}
	if fi1, fi2 := statSize(t, ls.imagePath(d1)), statSize(t, stacked); fi2*2 > fi1 {
		t.Errorf("the stacked image is %d bytes, the full one %d; want it much smaller", fi2, fi1)
	}
	got := diffShows(t, l2.Diff)

	// The same layer with a full image, in a second layer store: the same tree.
	otherState := t.TempDir()
	testkit.DetachMountsUnder(t, otherState)
	other, err := New(s, nil, Options{State: otherState, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	full, err := other.composefsDir(ctx, l2.img, d2)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Unmount(full, unix.MNT_DETACH) })
	checkSameTree(t, "the stacked diff against a full image", got, diffShows(t, full))

	// A server started again (nothing remembered) mounts the stacked image above the same base.
	if err := unix.Unmount(l2.Diff, 0); err != nil {
		t.Fatal(err)
	}
	ls2, err := New(s, &registryResolver{s: s, client: client}, Options{State: state, Diff: DiffComposefs})
	if err != nil {
		t.Fatal(err)
	}
	remount := func() {
		t.Helper()
		if _, err := ls2.composefsDir(ctx, l2.img, d2); err != nil {
			t.Fatal(err)
		}
		checkSameTree(t, "mounted again", diffShows(t, l2.Diff), got)
	}
	remount()
	if _, err := os.Stat(stacked); err != nil {
		t.Fatalf("the stacked image, mounted again: %v", err)
	}
	// This server wrote no image: v3 (an update of v2, whose image stands on v1's) is stacked
	// above v1's image all the same, once the tree built from the stored v1 writes that very
	// file; a file that differs by one byte is no base.
	l3 := lookup(ls2, "v3", v3)
	if _, err := os.Stat(ls2.stackedPath(v3.DiffIDs[0], d1)); err != nil {
		t.Errorf("v3's layer, looked up by a server that wrote no image, is not stacked above v1's: %v", err)
	}
	checkFile(t, filepath.Join(l3.Diff, "usr/lib/version"), fmt.Sprint("version 3", strings.Repeat("!", 80)))
	img1, err := os.ReadFile(ls.imagePath(d1))
	if err != nil {
		t.Fatal(err)
	}
	for i, flip := range []bool{false, true} {
		p := filepath.Join(t.TempDir(), "image")
		b := append([]byte(nil), img1...)
		if flip {
			b[len(b)/2] ^= 1
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := ls2.treeOfImage(ctx, d1, p); (err == nil) == flip {
			t.Errorf("case %d: v1's tree against its image with a byte flipped %v: %v", i, flip, err)
		}
	}
	// Unmounting v1's layer keeps its image: v2's stands on it.
	if err := ls2.Unmount(l1.Diff); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ls.imagePath(d1)); err != nil {
		t.Errorf("v1's image, which v2's stands on, is gone with v1's mount: %v", err)
	}
	// Its base image gone, the stacked image gives way to a full one.
	if err := unix.Unmount(l2.Diff, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(ls.imagePath(d1)); err != nil {
		t.Fatal(err)
	}
	remount()
	if _, err := os.Stat(stacked); !os.IsNotExist(err) {
		t.Errorf("the stacked image whose base is gone: %v; want it removed", err)
	}
	if _, err := os.Stat(ls.imagePath(d2)); err != nil {
		t.Errorf("v2's full image: %v", err)
	}
	// A stacked image that cannot be mounted (v3's, above a base image that is no EROFS file
	// system any more) gives way to a full one, and the base image nothing uses then goes.
	d3 := v3.DiffIDs[0]
	if err := unix.Unmount(l3.Diff, 0); err != nil {
		t.Fatal(err)
	}
	unix.Unmount(filepath.Join(state, dirMounts, filepath.Base(ls.imagePath(d1))), unix.MNT_DETACH)
	if err := os.WriteFile(ls.imagePath(d1), []byte("not an EROFS image"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ls2.composefsDir(ctx, l3.img, d3); err != nil {
		t.Fatalf("v3 above a broken base: %v; want it mounted from a full image", err)
	}
	checkFile(t, filepath.Join(l3.Diff, "usr/lib/version"), fmt.Sprint("version 3", strings.Repeat("!", 80)))
	if _, err := os.Stat(ls.imagePath(d3)); err != nil {
		t.Errorf("v3's full image after its stacked one failed to mount: %v", err)
	}
	if _, err := os.Stat(ls.imagePath(d1)); !os.IsNotExist(err) {
		t.Errorf("v1's image, which nothing stands on or mounts any more: %v; want it removed", err)
	}
	for _, dir := range []string{l2.Diff, l3.Diff} {
		if err := ls2.Unmount(dir); err != nil {
			t.Fatal(err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(state, dirComposefs, "*")); len(left) != 0 {
		t.Errorf("images left once nothing is mounted: %v", left)
	}
}

func statSize(t *testing.T, p string) int64 {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Size()
}
