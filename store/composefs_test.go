package store_test

import (
	"context"
	"os"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestGCSweepsComposefsCache checks that gc removes cached composefs images of images that are gone.
func TestGCSweepsComposefsCache(t *testing.T) {
	s := teststore.Open(t)
	stale, err := s.ComposefsPath(digest.FromString("no such image"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(stale, []byte("image"), 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ComposefsPath("sha256:../../etc"); err == nil {
		t.Fatal("a malformed image ID gave a path")
	}
	res, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if res.Composefs != 1 {
		t.Fatalf("gc removed %d composefs images, want 1", res.Composefs)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Fatalf("stale composefs image still there: %v", err)
	}
}
