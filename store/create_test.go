package store_test

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestOpenAfterKilledCreation: a store's creation killed before its renames leaves its temp files
// in the root and no version file. The next Open creates the store and removes them, so the
// store holds what an uninterrupted creation leaves.
func TestOpenAfterKilledCreation(t *testing.T) {
	root := t.TempDir()
	for _, name := range []string{"usage-123", "meta-456"} {
		if err := os.WriteFile(filepath.Join(root, name), []byte("cut"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	s := teststore.Open(t, teststore.At(root))
	teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("a")}))
	ents, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), "usage-") || strings.HasPrefix(e.Name(), "meta-") {
			t.Errorf("Open left %s in the root", e.Name())
		}
	}
	if _, err := store.ReadTotals(s); err != nil {
		t.Fatalf("totals of the created store: %v", err)
	}
}

// TestOpenConcurrentCreation: processes creating one store at once all succeed, with one version
// file and known totals.
func TestOpenConcurrentCreation(t *testing.T) {
	root := filepath.Join(t.TempDir(), "store")
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := store.Open(root); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(root, "version")); err != nil || string(b) != "kura-store 1\n" {
		t.Fatalf("version %q, %v", b, err)
	}
	if _, err := store.ReadTotals(teststore.Open(t, teststore.At(root))); err != nil {
		t.Fatalf("totals: %v", err)
	}
}

// TestTmpSpreadsItsDirectories: a store's tmp/, where every object's inode is made (in its temp
// shards), is the top of a directory hierarchy for ext4's allocator (FS_TOPDIR_FL), so the
// shards go to the emptiest block groups (the store under test lives on this machine's ext4).
func TestTmpSpreadsItsDirectories(t *testing.T) {
	root := t.TempDir()
	teststore.Open(t, teststore.At(root))
	if !testkit.TopDir(t, filepath.Join(root, "tmp")) {
		t.Fatal("tmp/ does not carry FS_TOPDIR_FL")
	}
}
