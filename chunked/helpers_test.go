package chunked

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testdata"
)

// testdataDir is testdata/zstd-chunked at the module root.
func testdataDir(t testing.TB) string { return testdata.Dir(t, "zstd-chunked") }

func readTestdata(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataDir(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}
