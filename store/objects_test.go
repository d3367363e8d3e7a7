package store_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestObjectLayout: objects live at objects/<hex[:2]>/<hex[2:]> (docs/design.md), the layout a
// composefs image's redirects assume with ObjectsDir as its data-only lower; ObjectName and
// ObjectPath agree with it, and a malformed digest names nothing.
func TestObjectLayout(t *testing.T) {
	root := t.TempDir()
	s, err := store.Open(root, store.WithoutSync())
	if err != nil {
		t.Fatal(err)
	}
	d := digest.FromString("hello")
	name, err := s.ObjectName(d)
	if err != nil || name != d.Encoded()[:2]+"/"+d.Encoded()[2:] {
		t.Fatalf("ObjectName = %q, %v", name, err)
	}
	if s.ObjectsDir() != filepath.Join(root, "objects") {
		t.Fatalf("ObjectsDir = %s", s.ObjectsDir())
	}
	if p, err := s.ObjectPath(d); err != nil || p != filepath.Join(s.ObjectsDir(), name) {
		t.Fatalf("ObjectPath = %q, %v", p, err)
	}
	for _, bad := range []digest.Digest{"sha256:../../etc", "", "sha512:" + digest.Digest(strings.Repeat("ab", 64))} {
		if _, err := s.ObjectName(bad); err == nil {
			t.Errorf("ObjectName(%q) accepted", bad)
		}
		if _, err := s.ObjectPath(bad); err == nil {
			t.Errorf("ObjectPath(%q) accepted", bad)
		}
	}
}

// TestObjectLookups: HasObject, Stat and Open find what an image stored, report an absent
// object as ErrNotFound, and refuse a symlink planted where an object belongs.
func TestObjectLookups(t *testing.T) {
	ctx := t.Context()
	s := teststore.Open(t)
	teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("alpha")}))
	a, absent := digest.FromString("alpha"), digest.FromString("nope")
	if !s.HasObject(a) {
		t.Fatal("HasObject(a) = false")
	}
	if info, err := s.Stat(ctx, a); err != nil || info.Size != 5 || info.Digest != a {
		t.Fatalf("Stat(a) = %+v, %v", info, err)
	}
	f, err := s.Open(ctx, a)
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	n, _ := f.Read(buf)
	f.Close()
	if string(buf[:n]) != "alpha" {
		t.Fatalf("read %q", buf[:n])
	}
	if _, err := s.Stat(ctx, absent); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Stat(absent): %v", err)
	}
	if _, err := s.Open(ctx, absent); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Open(absent): %v", err)
	}
	p, _ := s.ObjectPath(absent)
	os.MkdirAll(filepath.Dir(p), 0o755)
	if err := os.Symlink("/etc/passwd", p); err != nil {
		t.Fatal(err)
	}
	if s.HasObject(absent) {
		t.Fatal("a symlink counts as an object")
	}
	if f, err := s.Open(ctx, absent); err == nil {
		f.Close()
		t.Fatal("opened a symlink as an object")
	}
}
