package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/tartest"
)

// FuzzExtract: whatever the archive, Extract writes nothing outside its directory and nothing
// but directories and regular files (links become hard links to files inside).
func FuzzExtract(f *testing.F) {
	t := &testing.T{}
	f.Add(tartest.Tar(t, tartest.File("../../x", "a"), tartest.Symlink("l", "/etc/passwd")))
	f.Add(tartest.Tar(t, tartest.File("a/b", "b"), tartest.Symlink("a/c", "b"), tartest.Symlink("a/../../d", "../a/b")))
	f.Add([]byte("not a tar"))
	f.Fuzz(func(t *testing.T, b []byte) {
		root := t.TempDir()
		dir := filepath.Join(root, "x")
		Extract(bytes.NewReader(b), dir)
		filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return nil
			}
			if p != root && p != dir && !strings.HasPrefix(p, dir+"/") {
				t.Fatalf("%s written outside %s", p, dir)
			}
			if !fi.IsDir() && !fi.Mode().IsRegular() {
				t.Fatalf("%s is a %s", p, fi.Mode().Type())
			}
			return nil
		})
	})
}
