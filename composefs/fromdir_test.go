package composefs

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kura-oci/kura/verity"
)

// TestFromDirHardlinks: mkcomposefs writes each name of a hard-linked file as a file of its own
// (nlink 1), so the image of a tree with hard links must equal that of the same tree with
// copies; WithHardlinks keeps the links (and gives a different image).
func TestFromDirHardlinks(t *testing.T) {
	mk := func(link bool) string {
		dir := t.TempDir()
		for _, d := range []string{"a", "b"} {
			if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
				t.Fatal(err)
			}
		}
		big := bytes.Repeat([]byte("composefs"), 1000)
		for _, f := range []struct {
			name string
			data []byte
		}{{"a/big", big}, {"a/small", []byte("hi\n")}} {
			if err := os.WriteFile(filepath.Join(dir, f.name), f.data, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		for _, l := range [][2]string{{"a/big", "b/big2"}, {"a/small", "small2"}} {
			var err error
			if link {
				err = os.Link(filepath.Join(dir, l[0]), filepath.Join(dir, l[1]))
			} else {
				var b []byte
				if b, err = os.ReadFile(filepath.Join(dir, l[0])); err == nil {
					err = os.WriteFile(filepath.Join(dir, l[1]), b, 0o644)
				}
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		when := time.Unix(1700000000, 0)
		for _, p := range []string{"a/big", "a/small", "b/big2", "small2", "a", "b", "."} {
			if err := os.Chmod(filepath.Join(dir, p), map[bool]os.FileMode{true: 0o755, false: 0o644}[p == "a" || p == "b" || p == "."]); err != nil {
				t.Fatal(err)
			}
			if err := os.Chtimes(filepath.Join(dir, p), when, when); err != nil {
				t.Fatal(err)
			}
		}
		return dir
	}
	build := func(dir string, opts ...DirOption) ([]byte, *Node) {
		root, err := FromDir(context.Background(), dir, opts...)
		if err != nil {
			t.Fatal(err)
		}
		img, err := BuildImage(root)
		if err != nil {
			t.Fatal(err)
		}
		return img, root
	}
	linked, copied := mk(true), mk(false)
	imgLinked, root := build(linked)
	imgCopied, _ := build(copied)
	if n := root.LookupPath("/b/big2"); n == nil || n.HardlinkTo != nil || n.Nlink != 1 {
		t.Fatalf("/b/big2 of the default build: %+v, want a file of its own with nlink 1", n)
	}
	if !bytes.Equal(imgLinked, imgCopied) {
		t.Error("the image of a tree with hard links differs from that of the same tree with copies; mkcomposefs writes them alike")
	}
	imgKept, root := build(linked, WithHardlinks())
	if n := root.LookupPath("/b/big2"); n == nil || n.Target() != root.LookupPath("/a/big") || n.Target().Nlink != 2 {
		t.Fatalf("WithHardlinks: /b/big2 is %+v, want a link to /a/big with nlink 2", n)
	}
	if bytes.Equal(imgKept, imgCopied) {
		t.Error("WithHardlinks made the same image as copies")
	}
}

// TestDigestStoreName: a digest store keeps a file at "xx/rest" of its fs-verity digest's hex.
func TestDigestStoreName(t *testing.T) {
	d, err := verity.ParseDigest(strings.Repeat("ab", 32))
	if err != nil {
		t.Fatal(err)
	}
	if got := DigestStoreName(d); got != "ab/"+strings.Repeat("ab", 31) {
		t.Fatalf("bad object path %s", got)
	}
}

// TestFromDirManyFiles: FromDir reads contents on several workers in batches; every node must
// still get its own file's content or digest, across more files and bytes than one batch holds.
func TestFromDirManyFiles(t *testing.T) {
	dir := t.TempDir()
	want := map[string][]byte{}
	for i := 0; i < 3*batchFiles+5; i++ {
		sub := filepath.Join(dir, "d"+strconv.Itoa(i%7))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		size := (i * 977) % 200
		if i%50 == 0 {
			size = batchBytes/2 + i
		}
		data := bytes.Repeat([]byte{byte(i), byte(i >> 8), 7}, size/3+1)[:size]
		name := filepath.Join(sub, "f"+strconv.Itoa(i))
		if err := os.WriteFile(name, data, 0o644); err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(dir, name)
		want[rel] = data
	}
	root, err := FromDir(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	for rel, data := range want {
		n := root.LookupPath("/" + rel)
		if n == nil {
			t.Fatalf("%s missing from the tree", rel)
		}
		switch {
		case len(data) == 0:
			if n.Content != nil || n.Digest != nil {
				t.Errorf("%s: empty file has content or digest", rel)
			}
		case len(data) <= InlineThreshold:
			if !bytes.Equal(n.Content, data) {
				t.Errorf("%s: inline content %q, want %q", rel, n.Content, data)
			}
		default:
			if d := verity.FromBytes(data); n.Digest == nil || *n.Digest != d || n.Payload != DigestStoreName(d) {
				t.Errorf("%s: digest %v payload %q, want %s", rel, n.Digest, n.Payload, d)
			}
		}
	}
}
