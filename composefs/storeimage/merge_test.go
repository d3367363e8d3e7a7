package storeimage

import (
	"archive/tar"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/composefs/mount"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// mergeOps are what one layer does to the path p of a case (t is a file every case has from
// its first layer, the target of hard links):
//
//	f  file p            d  directory p/ with a file in it   w  whiteout .wh.p
//	o  directory p/, opaque, with a file in it                h  p hard link to t
//	t  t replaced by a new file (links to the old t keep it)   -  nothing
//	fw file then its whiteout in the same layer, wf the other order; dw, wd likewise for a
//	directory; ow an opaque directory then a whiteout of it.
var mergeOps = []string{"f", "d", "w", "o", "h", "t", "-", "fw", "wf", "dw", "wd", "ow"}

// mergeCorpus builds three layers holding one directory per sequence of three ops (every order
// of every op, 1728 cases), each case in its own directory cN.
func mergeCorpus(t *testing.T) (layers [][]byte, cases []string) {
	var ents [3][]ent
	n := 0
	for _, a := range mergeOps {
		for _, b := range mergeOps {
			for _, c := range mergeOps {
				dir := fmt.Sprintf("c%d/", n)
				n++
				cases = append(cases, dir+" "+a+" "+b+" "+c)
				ents[0] = append(ents[0], dirEnt(dir, 0o755, 0), reg(dir+"t", big+"t0", 0o644))
				for li, op := range []string{a, b, c} {
					ents[li] = append(ents[li], opEnts(dir, op, li)...)
				}
			}
		}
	}
	// Names a TOC cannot carry (not UTF-8) must reach both trees byte for byte.
	ents[0] = append(ents[0], reg("names/caf\xe9", "x", 0o644), other(tar.TypeSymlink, "names/l\xff", "caf\xe9"))
	for li := range ents {
		layers = append(layers, mkTar(t, ents[li]...))
	}
	return layers, cases
}

func dirEnt(name string, mode int64, uid int) ent {
	e := dir(name, mode)
	e.Header.Uid = uid
	return e
}

// opEnts are the entries of one op in layer li of the case in dir; metadata differs per layer
// so that the tree shows which layer won.
func opEnts(dir, op string, li int) []ent {
	p := dir + "p"
	file := reg(p, fmt.Sprintf("%sfile of layer %d", big, li), 0o640+int64(li))
	file.Header.Uid, file.Header.Gid = 1000+li, 2000+li
	file.Header.PAXRecords = map[string]string{
		"SCHILY.xattr.user.layer":             fmt.Sprint(li),
		"SCHILY.xattr.trusted.overlay.opaque": "y", // must never reach a checkout
	}
	d := []ent{dirEnt(p+"/", 0o750+int64(li), 3000+li), reg(fmt.Sprintf("%s/in%d", p, li), fmt.Sprintf("in %d\n", li), 0o644)}
	wh := reg(dir+".wh.p", "", 0o644)
	switch op {
	case "f":
		return []ent{file}
	case "d":
		return d
	case "w":
		return []ent{wh}
	case "o":
		return []ent{d[0], reg(p+"/.wh..wh..opq", "", 0o644), d[1]}
	case "h":
		return []ent{other(tar.TypeLink, p, dir+"t")}
	case "t":
		if li == 0 {
			return nil // the case's first layer makes t anyway
		}
		return []ent{reg(dir+"t", fmt.Sprintf("%st of layer %d", big, li), 0o600)}
	case "fw":
		return []ent{file, wh}
	case "wf":
		return []ent{wh, file}
	case "dw":
		return append(d, wh)
	case "wd":
		return append([]ent{wh}, d...)
	case "ow":
		return []ent{d[0], reg(p+"/.wh..wh..opq", "", 0o644), d[1], wh}
	}
	return nil
}

// TestMergeCorpusMountEqualsCheckout stacks every order of whiteouts, opaque directories, files
// over directories and back, hard links across layers and same-layer whiteouts, then compares
// the real composefs mount with a checkout of the same image, metadata included: both must
// apply the one merge (package merge).
func TestMergeCorpusMountEqualsCheckout(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test mounts and chowns: run it as root")
	}
	ctx := context.Background()
	s := teststore.Open(t)
	layers, cases := mergeCorpus(t)
	img := importImage(t, s, layers)
	cfs, err := Ensure(ctx, s, img)
	if err != nil {
		t.Fatal(err)
	}
	target := t.TempDir()
	plan, err := mount.NewPlan(cfs, []string{s.ObjectsDir()}, target)
	if err != nil {
		t.Fatal(err)
	}
	if err := mount.Mount(ctx, plan); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mount.Unmount(target) })
	co := filepath.Join(t.TempDir(), "co")
	if _, err := checkout.Checkout(ctx, s, img, co, checkout.Options{Link: checkout.LinkCopy}); err != nil {
		t.Fatal(err)
	}
	got, gotLinks := walk(t, target)
	want, wantLinks := walk(t, co)
	caseOf := func(p string) string {
		if i := caseIndex(p); i >= 0 {
			return cases[i]
		}
		return "-"
	}
	bad := 0
	report := func(format string, args ...any) {
		if bad++; bad <= 40 {
			t.Errorf(format, args...)
		}
	}
	for p, w := range want {
		if g, ok := got[p]; !ok {
			report("%s (case %s): in the checkout, not in the mount", p, caseOf(p))
		} else if g != w {
			report("%s (case %s): mount %+v, checkout %+v", p, caseOf(p), g, w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			report("%s (case %s): in the mount, not in the checkout", p, caseOf(p))
		}
	}
	if fmt.Sprint(gotLinks) != fmt.Sprint(wantLinks) {
		report("hard links: mount %v, checkout %v", gotLinks, wantLinks)
	}
	if bad > 0 {
		t.Fatalf("%d differences between mount and checkout", bad)
	}
	checkSemantics(t, co, cases)
	for _, root := range []string{target, co} {
		if l, err := os.Readlink(filepath.Join(root, "names/l\xff")); err != nil || l != "caf\xe9" {
			t.Errorf("%s: names/l\\xff -> %q, %v; want the exact bytes", root, l, err)
		}
		if _, err := os.Lstat(filepath.Join(root, "names/caf\xe9")); err != nil {
			t.Errorf("%s: names/caf\\xe9: %v", root, err)
		}
	}
}

func caseIndex(p string) int {
	n := -1
	fmt.Sscanf(strings.SplitN(p, "/", 2)[0], "c%d", &n)
	return n
}

// checkSemantics checks, on the checkout, what the OCI rules say for a few orders, so that
// mount and checkout do not merely agree on something wrong.
func checkSemantics(t *testing.T, co string, cases []string) {
	t.Helper()
	find := func(ops string) string {
		for _, c := range cases {
			if strings.HasSuffix(c, " "+ops) {
				return filepath.Join(co, strings.Fields(c)[0])
			}
		}
		t.Fatalf("no case %q", ops)
		return ""
	}
	content := func(p string) string {
		b, err := os.ReadFile(p)
		if err != nil {
			return "(" + err.Error() + ")"
		}
		return strings.TrimPrefix(string(b), big)
	}
	// A whiteout hides only lower layers: the same layer's file stays, in either order.
	for _, ops := range []string{"- - fw", "- - wf", "f - fw", "d - wf"} {
		if got := content(filepath.Join(find(ops), "p")); got != "file of layer 2" {
			t.Errorf("case %q: p reads %q, want the same layer's file", ops, got)
		}
	}
	// A directory written again in the layer that whites it out keeps only that layer's files.
	for _, ops := range []string{"d - dw", "d - wd", "d - ow"} {
		names, _ := filepath.Glob(filepath.Join(find(ops), "p", "*"))
		if len(names) != 1 || filepath.Base(names[0]) != "in2" {
			t.Errorf("case %q: p holds %v, want only in2", ops, names)
		}
	}
	// Whiteout, then re-creation in a later layer.
	if got := content(filepath.Join(find("f w f"), "p")); got != "file of layer 2" {
		t.Errorf("case f w f: p reads %q", got)
	}
	if _, err := os.Lstat(filepath.Join(find("f d w"), "p")); !os.IsNotExist(err) {
		t.Errorf("case f d w: p is still there (%v)", err)
	}
	// A hard link keeps the inode it named when its target is replaced later.
	if got := content(filepath.Join(find("h t -"), "p")); got != "t0" {
		t.Errorf("case h t -: p reads %q, want the old t", got)
	}
	// Opaque: the lower directory's files are gone.
	if _, err := os.Lstat(filepath.Join(find("d o -"), "p", "in0")); !os.IsNotExist(err) {
		t.Errorf("case d o -: in0 shows through the opaque directory (%v)", err)
	}
	// The image's overlay xattrs never reach a checkout.
	buf := make([]byte, 1024)
	n, err := unix.Llistxattr(filepath.Join(find("- - f"), "p"), buf)
	if err != nil || strings.Contains(string(buf[:max(n, 0)]), "overlay") {
		t.Errorf("checkout xattrs %q (%v): want no trusted.overlay.*", buf[:max(n, 0)], err)
	}
}
