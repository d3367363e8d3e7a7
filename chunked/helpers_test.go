package chunked

import (
	"os"
	"path/filepath"
	"testing"
)

// testdataDir returns ../shared/testdata/zstd-chunked relative to the module root, or skips.
func testdataDir(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Skip("module root not found")
		}
		dir = parent
	}
	td := filepath.Join(dir, "..", "shared", "testdata", "zstd-chunked")
	if _, err := os.Stat(td); err != nil {
		t.Skipf("conformance vectors not available at %s: %v", td, err)
	}
	return td
}

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
