// Package testdata finds the shared conformance vectors for tests: ../shared/testdata next to the
// module root, or a copy in testdata/ inside it. Only tests import it.
package testdata

import (
	"os"
	"path/filepath"
	"testing"
)

// Dir returns the vectors directory joined with rel, skipping the test when it is absent.
func Dir(t testing.TB, rel ...string) string {
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
	for _, base := range []string{filepath.Join(dir, "..", "shared", "testdata"), filepath.Join(dir, "testdata")} {
		p := filepath.Join(append([]string{base}, rel...)...)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	t.Skipf("test vectors %s not found in ../shared/testdata or testdata/", filepath.Join(rel...))
	return ""
}
