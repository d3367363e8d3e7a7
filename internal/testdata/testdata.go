// Package testdata finds the conformance vectors in the module's own testdata/ directory (the
// composefs and zstd:chunked vectors, kept in git). Only tests import it.
package testdata

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
)

// Dir returns testdata/ at the root of the kura module joined with rel. The vectors are part of
// the repository, so a missing one fails the test: a test that quietly skips its byte-identity
// or hostile-input checks would still print ok.
func Dir(t testing.TB, rel ...string) string {
	t.Helper()
	p := filepath.Join(append([]string{testkit.ModuleRoot(t), "testdata"}, rel...)...)
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("test vectors: %v", err)
	}
	return p
}

// Read returns the content of testdata/rel... without a testing.TB, for fuzz seeds gathered
// before the fuzz target runs.
func Read(rel ...string) ([]byte, error) {
	root, err := testkit.FindModuleRoot()
	if err != nil {
		return nil, err
	}
	return os.ReadFile(filepath.Join(append([]string{root, "testdata"}, rel...)...))
}
