package layerfs

import (
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"
)

func TestObjects(t *testing.T) {
	a, b := digest.FromString("a"), digest.FromString("b")
	entries := []Entry{
		{Type: TypeReg, Name: "x", Size: 1, Digest: b},
		{Type: TypeReg, Name: "y", Size: 1, Digest: a},
		{Type: TypeReg, Name: "z", Size: 1, Digest: b},
		{Type: TypeReg, Name: "empty"},
		{Type: TypeLink, Name: "l", Linkname: "x", Digest: digest.FromString("not content")},
	}
	want := []digest.Digest{a, b}
	slices.Sort(want)
	if got := Objects(entries); !slices.Equal(got, want) {
		t.Fatalf("Objects = %v, want %v (distinct, sorted, files with content only)", got, want)
	}
	if got := Objects(nil); len(got) != 0 {
		t.Fatalf("Objects(nil) = %v", got)
	}
}

func TestTypeString(t *testing.T) {
	for typ, want := range map[Type]string{TypeReg: "reg", TypeLink: "hardlink", TypeSymlink: "symlink",
		TypeDir: "dir", TypeChar: "char", TypeBlock: "block", TypeFifo: "fifo", 0: "unknown", 200: "unknown"} {
		if got := typ.String(); got != want {
			t.Errorf("Type(%d).String() = %q, want %q", typ, got, want)
		}
	}
}
