package composefs

import (
	"bytes"
	"errors"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/verity"
)

func TestTreeAPI(t *testing.T) {
	root := NewDir(0o755)
	for _, name := range []string{"", ".", "..", "a/b", "x\x00"} {
		if err := root.AddChild(name, &Node{Mode: ModeRegular | 0o644}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("name %q: %v, want ErrInvalid", name, err)
		}
	}
	dir := NewDir(0o700)
	if err := root.AddPath("/d", dir); err != nil {
		t.Fatal(err)
	}
	f := &Node{Mode: ModeRegular | 0o644, Size: 3, Content: []byte("abc"), Nlink: 2}
	if err := root.AddPath("d/f", f); err != nil {
		t.Fatal(err)
	}
	if err := root.AddPath("/d/f", &Node{Mode: ModeRegular}); !errors.Is(err, errdefs.ErrAlreadyExists) {
		t.Errorf("duplicate: %v", err)
	}
	if err := root.AddPath("/missing/f", &Node{Mode: ModeRegular}); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("missing parent: %v", err)
	}
	if err := root.AddPath("/link", &Node{HardlinkTo: f}); err != nil {
		t.Fatal(err)
	}
	if root.LookupPath("/d/f") != f || f.Path() != "/d/f" || root.LookupPath("link").Target() != f {
		t.Fatal("lookup or path wrong")
	}
	if err := f.SetXattr("user.a", make([]byte, 40000)); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("oversized xattrs: %v", err)
	}
	img, err := BuildImage(root)
	if err != nil {
		t.Fatal(err)
	}
	back, err := ReadImage(img)
	if err != nil {
		t.Fatal(err)
	}
	bf := back.LookupPath("/d/f")
	if bf == nil || !bytes.Equal(bf.Content, []byte("abc")) || back.LookupPath("/link").Target() != bf {
		t.Fatal("read back tree differs")
	}
}

func TestWriterRejectsBadTrees(t *testing.T) {
	d := verity.FromBytes([]byte("x"))
	cases := map[string]func(root *Node){
		"bad mode":        func(r *Node) { r.AddChild("x", &Node{Mode: 0o644}) },
		"empty symlink":   func(r *Node) { r.AddChild("x", &Node{Mode: ModeSymlink | 0o777}) },
		"content size":    func(r *Node) { r.AddChild("x", &Node{Mode: ModeRegular, Size: 9, Content: []byte("abc")}) },
		"big content":     func(r *Node) { r.AddChild("x", &Node{Mode: ModeRegular, Size: 6000, Content: make([]byte, 6000)}) },
		"too big":         func(r *Node) { r.AddChild("x", &Node{Mode: ModeRegular, Size: 1 << 62, Payload: "ab/cd", Digest: &d}) },
		"outside link":    func(r *Node) { r.AddChild("x", &Node{HardlinkTo: &Node{Mode: ModeRegular}}) },
		"dir link":        func(r *Node) { s := NewDir(0o755); r.AddChild("s", s); r.AddChild("x", &Node{HardlinkTo: s}) },
		"duplicate xattr": func(r *Node) { r.Xattrs = []Xattr{{"user.a", nil}, {"user.a", nil}} },
		"long payload": func(r *Node) {
			r.AddChild("x", &Node{Mode: ModeRegular, Size: 100, Payload: string(make([]byte, 5000))})
		},
	}
	for name, mutate := range cases {
		root := NewDir(0o755)
		mutate(root)
		if _, err := BuildImage(root); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
	if _, err := BuildImage(NewDir(0o755), WithMaxVersion(2)); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Errorf("version 2: %v", err)
	}
}

func TestReadImageRejectsGarbage(t *testing.T) {
	for _, img := range [][]byte{nil, make([]byte, 4096), bytes.Repeat([]byte{0xff}, 8192)} {
		if _, err := ReadImage(img); err == nil {
			t.Errorf("garbage of %d bytes accepted", len(img))
		}
	}
}
