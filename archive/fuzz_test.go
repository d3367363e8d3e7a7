package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzExtract: whatever the archive, Extract writes nothing outside its directory and nothing
// but directories and regular files (links become hard links to files inside).
func FuzzExtract(f *testing.F) {
	t := &testing.T{}
	f.Add(tarBytes(t, entry{name: "../../x", body: "a"}, entry{name: "l", link: "/etc/passwd"}))
	f.Add(tarBytes(t, entry{name: "a/b", body: "b"}, entry{name: "a/c", link: "b"}, entry{name: "a/../../d", link: "../a/b"}))
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
