package store_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestGCRemovesLazyRemovalLeftovers: a lazy pull's completion renames lazy/<hex> to
// lazy/.rm-*/x, then deletes it; a crash in between leaves the filled placeholders (a copy of
// the pulled layers' file data) there. Nothing else ever removes them: gc, under the exclusive
// lock (no completion is between its rename and its delete then), must.
func TestGCRemovesLazyRemovalLeftovers(t *testing.T) {
	s := teststore.Open(t)
	left := filepath.Join(s.Root(), "lazy", ".rm-123", "x")
	data := filepath.Join(left, "0123abcd", "data", "ab")
	if err := os.MkdirAll(data, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(data, "cdef"), []byte("a filled placeholder"), 0o444); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(left, "pull.json"), []byte("{}"), 0o444); err != nil {
		t.Fatal(err)
	}
	res, err := s.GC(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Dir(left)); !os.IsNotExist(err) {
		t.Fatalf("gc left the crashed removal's placeholders in lazy/ (stat: %v)", err)
	}
	if res.TempFiles == 0 {
		t.Errorf("gc did not count the leftover: %+v", res)
	}
}
