package layername

import (
	"errors"
	"path"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

func TestParse(t *testing.T) {
	ok := []struct {
		in, path string
		kind     Kind
		target   string
	}{
		{"./", ".", Plain, ""},
		{".", ".", Plain, ""},
		{"./etc/", "etc", Plain, ""},
		{"etc//passwd", "etc/passwd", Plain, ""},
		{"etc/.wh.a", "etc/.wh.a", Whiteout, "etc/a"},
		{"./.wh.etc", ".wh.etc", Whiteout, "etc"},
		{".wh....", ".wh....", Whiteout, "..."}, // "..." is an ordinary name
		{"etc/.wh..wh..opq", "etc/.wh..wh..opq", Opaque, ""},
		{".wh..wh..opq", ".wh..wh..opq", Opaque, ""},
		{"caf\xe9", "caf\xe9", Plain, ""}, // not UTF-8, still a name
	}
	for _, c := range ok {
		n, err := Parse(c.in)
		if err != nil || n.Path != c.path || n.Kind != c.kind || n.Target != c.target {
			t.Errorf("Parse(%q) = %+v, %v; want path %q kind %d target %q", c.in, n, err, c.path, c.kind, c.target)
		}
	}
	bad := []string{
		"", "/etc/passwd", "../x", "a/../../x", "a/..", "a\x00b",
		".wh...", "./.wh...", "etc/.wh...", // issue 13 case 1: a whiteout of ".."
		".wh..", "etc/.wh.", ".wh.", // ".", ""
		".wh..wh.plnk", "etc/.wh..wh.aufs", // AUFS metadata
		".wh.d/f", "a/.wh..wh..opq/b", // a whiteout used as a directory
		strings.Repeat("a/", 2049), ".wh." + strings.Repeat("a", 256),
	}
	for _, in := range bad {
		if n, err := Parse(in); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Parse(%q) = %+v, %v; want ErrInvalid", in, n, err)
		}
	}
}

func TestLinkAndElement(t *testing.T) {
	if _, err := Link("./"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("a hard link to the root: %v", err)
	}
	if got, err := Link("./etc/a"); err != nil || got != "etc/a" {
		t.Errorf("Link: %q, %v", got, err)
	}
	for _, e := range []string{"", ".", "..", "a/b", "a\x00", strings.Repeat("a", 256)} {
		if err := Element(e); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("Element(%q): %v", e, err)
		}
	}
}

func TestCheckTOC(t *testing.T) {
	if err := CheckTOC("etc/a", "target", "user.x"); err != nil {
		t.Fatal(err)
	}
	err := CheckTOC("etc/caf\xe9")
	if !errors.Is(err, ErrTOCInexact) || !errors.Is(err, errdefs.ErrNeedFull) || errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("a name that is not UTF-8: %v; want ErrTOCInexact, unsupported, not invalid", err)
	}
	if err := CheckTOC("etc/a", "user.\xff"); !errors.Is(err, ErrTOCInexact) {
		t.Fatalf("an xattr name that is not UTF-8: %v", err)
	}
}

// FuzzParse: whatever the name, an accepted one stays inside the tree, and a whiteout names
// exactly one element of its own directory.
func FuzzParse(f *testing.F) {
	for _, s := range []string{".wh...", "etc/.wh.a", "./a/b/", ".wh..wh..opq", "a/../b", "caf\xe9"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("%q: %v is not ErrInvalid", s, err)
			}
			return
		}
		for _, p := range []string{n.Path, n.Target} {
			if strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") || strings.Contains(p, "/../") || strings.HasSuffix(p, "/..") {
				t.Fatalf("%q: %+v leaves the tree", s, n)
			}
		}
		if n.Kind == Whiteout && (path.Dir(n.Target) != n.Dir || Element(path.Base(n.Target)) != nil) {
			t.Fatalf("%q: whiteout %+v names no element of its directory", s, n)
		}
	})
}
