package composefs_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/composefs"
	"github.com/kura-oci/kura/composefs/dump"
	"github.com/kura-oci/kura/internal/testdata"
)

func vectorDir(t testing.TB) string { return testdata.Dir(t, "composefs") }

// FuzzReadImage feeds hostile images to the reader (seeded with images of the small vectors, in
// both layouts); it
// must never panic, and what it accepts must build again.
func FuzzReadImage(f *testing.F) {
	dir := vectorDir(f)
	files, _ := filepath.Glob(filepath.Join(dir, "*.dump"))
	for _, file := range files {
		b, err := os.ReadFile(file)
		if err != nil || len(b) > 64<<10 {
			continue
		}
		root, err := dump.Parse(bytes.NewReader(b), false)
		if err != nil {
			continue
		}
		if img, err := composefs.BuildImage(root); err == nil {
			f.Add(img)
		}
		if img, err := composefs.BuildImage(root, composefs.WithDenseInodes()); err == nil {
			f.Add(img) // long xattr prefixes and compact mtimes
		}
	}
	f.Fuzz(func(t *testing.T, img []byte) {
		root, err := composefs.ReadImage(img)
		if err != nil {
			return
		}
		if _, err := composefs.BuildImage(root); err != nil {
			// Hostile images may hold trees the writer refuses (e.g. too-big xattrs); that
			// must be a clean error.
			return
		}
		var d bytes.Buffer
		if err := dump.Write(&d, root); err != nil {
			t.Fatal(err)
		}
	})
}
