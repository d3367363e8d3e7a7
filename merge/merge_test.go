package merge

import (
	"errors"
	"strings"
	"testing"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

func reg(name string) chunked.Entry {
	return chunked.Entry{Type: chunked.TypeReg, Name: name, Mode: 0o644}
}
func dir(name string) chunked.Entry {
	return chunked.Entry{Type: chunked.TypeDir, Name: name, Mode: 0o755}
}
func link(name, target string) chunked.Entry {
	return chunked.Entry{Type: chunked.TypeLink, Name: name, Linkname: target}
}

func merged(t *testing.T, layers ...[]chunked.Entry) (*Tree, error) {
	t.Helper()
	tr := New()
	for _, l := range layers {
		entries, err := chunked.DecodeEntries(&chunked.TOC{Version: 1, Entries: l})
		if err != nil {
			t.Fatal(err)
		}
		if err := tr.Apply(entries); err != nil {
			return tr, err
		}
	}
	return tr, nil
}

// list is the merged tree as "path:type[:names]" in Walk order.
func list(t *testing.T, tr *Tree) string {
	t.Helper()
	var out []string
	tr.Walk(func(p string, n *Node) error {
		s := p + ":" + n.Entry.Type.String()
		if n.Inode != nil {
			s += ":" + string(rune('0'+n.Inode.Names))
		}
		out = append(out, s)
		return nil
	})
	return strings.Join(out, " ")
}

func TestMergeRules(t *testing.T) {
	cases := []struct {
		name   string
		layers [][]chunked.Entry
		want   string
	}{
		{"whiteout hides a lower file", [][]chunked.Entry{{dir("etc"), reg("etc/a")}, {reg("etc/.wh.a")}}, ".:dir etc:dir"},
		// Issue 13 case 7: a whiteout hides only lower layers, whatever the order in its own.
		{"same layer: file then its whiteout", [][]chunked.Entry{{dir("etc"), reg("etc/a"), reg("etc/.wh.a")}}, ".:dir etc:dir etc/a:reg"},
		{"same layer: whiteout then file", [][]chunked.Entry{{reg("etc/a")}, {reg("etc/.wh.a"), reg("etc/a")}}, ".:dir etc:dir etc/a:reg"},
		{"same layer: dir written then whited out keeps its own files",
			[][]chunked.Entry{{dir("d"), reg("d/old")}, {dir("d"), reg("d/new"), reg(".wh.d")}}, ".:dir d:dir d/new:reg"},
		{"opaque keeps the same layer's files only",
			[][]chunked.Entry{{dir("d"), reg("d/old"), dir("d/sub"), reg("d/sub/old")}, {dir("d/sub"), reg("d/sub/new"), reg("d/.wh..wh..opq")}},
			".:dir d:dir d/sub:dir d/sub/new:reg"},
		{"file over directory and back",
			[][]chunked.Entry{{dir("p"), reg("p/in")}, {reg("p")}, {dir("p"), reg("p/again")}}, ".:dir p:dir p/again:reg"},
		{"directories merge", [][]chunked.Entry{{dir("p"), reg("p/a")}, {dir("p"), reg("p/b")}}, ".:dir p:dir p/a:reg p/b:reg"},
		{"whiteout then re-creation", [][]chunked.Entry{{reg("a")}, {reg(".wh.a")}, {dir("a")}}, ".:dir a:dir"},
		{"hard link across layers survives its target's replacement",
			[][]chunked.Entry{{reg("t")}, {link("h", "t")}, {reg("t")}}, ".:dir h:reg:1 t:reg"},
		{"hard link names counted", [][]chunked.Entry{{reg("t"), link("h", "t"), link("i", "h")}}, ".:dir h:reg:3 i:reg:3 t:reg:3"},
		{"whiteout of something absent implies its directory", [][]chunked.Entry{{reg("x/.wh.y")}}, ".:dir x:dir"},
	}
	for _, c := range cases {
		tr, err := merged(t, c.layers...)
		if err != nil {
			t.Errorf("%s: %v", c.name, err)
			continue
		}
		if got := list(t, tr); got != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
	}
}

func TestMergeRefuses(t *testing.T) {
	sym := chunked.Entry{Type: chunked.TypeSymlink, Name: "s", Linkname: "/etc"}
	cases := map[string][][]chunked.Entry{
		"whiteout of ..":             {{reg("keep")}, {reg(".wh...")}},
		"whiteout of .":              {{reg(".wh..")}},
		"empty whiteout":             {{reg("d/.wh.")}},
		"entry below a symlink":      {{sym}, {reg("s/passwd")}},
		"whiteout below a symlink":   {{sym}, {reg("s/.wh.passwd")}},
		"entry below a file":         {{reg("f")}, {reg("f/x")}},
		"hard link to a directory":   {{dir("d"), link("h", "d")}},
		"hard link to nothing":       {{link("h", "gone")}},
		"hard link to a whited-out":  {{reg("t")}, {reg(".wh.t"), link("h", "t")}},
		"uid over 32 bits":           {{{Type: chunked.TypeReg, Name: "f", UID: 1 << 32}}},
		"uid -1 (chown: no change)":  {{{Type: chunked.TypeReg, Name: "f", UID: 1<<32 - 1}}},
		"root that is not directory": {{reg(".")}},
	}
	for name, layers := range cases {
		if _, err := merged(t, layers...); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

func TestMergeDropsOverlayXattrs(t *testing.T) {
	e := reg("f")
	e.Xattrs = map[string]string{"trusted.overlay.opaque": "eQ==", "user.overlay.redirect": "eA==", "user.keep": "eA=="}
	entries, err := chunked.DecodeEntries(&chunked.TOC{Version: 1, Entries: []chunked.Entry{e}})
	if err != nil {
		t.Fatal(err)
	}
	tr := New()
	if err := tr.Apply(entries); err != nil {
		t.Fatal(err)
	}
	got := tr.Root.Children["f"].Entry.Xattrs
	if len(got) != 1 || string(got["user.keep"]) != "x" {
		t.Fatalf("xattrs %v, want only user.keep", got)
	}
	if len(entries[0].Xattrs) != 3 {
		t.Fatal("the layer's own entry changed")
	}
}
