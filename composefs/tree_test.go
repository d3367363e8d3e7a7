package composefs

import (
	"bytes"
	"errors"
	"fmt"
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

// TestDenseInodes: external files whose mtimes all differ take 128 bytes each with dense inodes
// (a compact inode carrying its mtime, the redirect named by a long prefix) against mkcomposefs's
// 192, and read back with the same mtimes and redirects.
func TestDenseInodes(t *testing.T) {
	const files = 1000
	root := NewDir(0o755)
	root.Mtime = Timespec{Sec: 1_700_000_000}
	for i := 0; i < files; i++ {
		d := verity.Digest{byte(i), byte(i >> 8)}
		f := &Node{Mode: ModeRegular | 0o644, Size: 5000, Nlink: 1, Payload: d.String()[:2] + "/" + d.String()[2:],
			Mtime: Timespec{Sec: 1_700_000_000 + int64(i)*86400}}
		if err := root.AddChild(fmt.Sprintf("f%04d", i), f); err != nil {
			t.Fatal(err)
		}
	}
	// One mtime with other nanoseconds, one too far after the epoch, one more than 2^63 s
	// before it (a gap int64 arithmetic wraps): all stay extended.
	root.Children()[1].Mtime.Nsec = 5
	root.Children()[2].Mtime.Sec += 1 << 33
	root.Children()[3].Mtime.Sec = -(1 << 62) - (1 << 62)
	plain, err := BuildImage(root)
	if err != nil {
		t.Fatal(err)
	}
	dense, err := BuildImage(root, WithDenseInodes())
	if err != nil {
		t.Fatal(err)
	}
	if saved := len(plain) - len(dense); saved < files*60 {
		t.Errorf("dense image %d bytes, mkcomposefs's layout %d: saves %d, want at least %d", len(dense), len(plain), saved, files*60)
	}
	back, err := ReadImage(dense)
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range root.Children() {
		got := back.Lookup(want.Name())
		if got == nil || got.Mtime != want.Mtime || got.Payload != want.Payload {
			t.Fatalf("file %d reads back as %+v, want mtime %v payload %s", i, got, want.Mtime, want.Payload)
		}
	}
}
