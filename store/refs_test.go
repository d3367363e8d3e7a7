package store_test

import (
	"context"
	"errors"
	"net/url"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestRefsReadsWhatRefReads: Refs lists a name exactly when Ref reads it: a file spelled other
// than url.PathEscape spells its name is left out (Ref cannot read it either), a symbolic link is
// followed by both, and a FIFO is refused by both instead of holding them (and the lock).
func TestRefsReadsWhatRefReads(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t)
	img := teststore.Named(t, s, "reg.example/app:1", tarOf(t, map[string][]byte{"a": []byte("a")}))
	dir := filepath.Join(s.Root(), "refs")
	canonical := url.PathEscape("reg.example/app:1")

	// Another spelling of a second name: "%3A" for ":", which PathEscape leaves as it is.
	other := "reg.example%2Fapp%3A2"
	if err := os.WriteFile(filepath.Join(dir, other), []byte(img.ID.String()+"\n"), 0o444); err != nil {
		t.Fatal(err)
	}
	// A symbolic link naming the canonical file of the first name.
	if err := os.Symlink(canonical, filepath.Join(dir, url.PathEscape("linked"))); err != nil {
		t.Fatal(err)
	}
	refs, err := s.Refs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(refs) != 2 || refs["reg.example/app:1"] != img.ID || refs["linked"] != img.ID {
		t.Fatalf("Refs = %v; want reg.example/app:1 and linked, both %s", refs, img.ID)
	}
	if _, err := s.Ref(ctx, "reg.example/app:2"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Ref of the name spelled otherwise: %v, want not found", err)
	}
	if d, err := s.Ref(ctx, "linked"); err != nil || d != img.ID {
		t.Fatalf("Ref of the linked name: %v, %v", d, err)
	}

	if err := unix.Mkfifo(filepath.Join(dir, "fifo"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Refs(ctx); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Refs with a FIFO in refs/: %v, want invalid", err)
	}
	if _, err := s.Ref(ctx, "fifo"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Ref of a FIFO: %v, want invalid", err)
	}
}
