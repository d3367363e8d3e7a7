package dump

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/composefs"
)

// FuzzParse feeds hostile dumps to the parser; whatever it accepts must build, read back and
// rebuild to the same bytes.
func FuzzParse(f *testing.F) {
	dir := vectorDir(f)
	files, _ := filepath.Glob(filepath.Join(dir, "*.dump"))
	for _, file := range files {
		// Small seeds only: large ones slow the coverage-guided engine to a crawl.
		if st, err := os.Stat(file); err == nil && st.Size() < 4<<10 {
			f.Add(readVector(f, dir, filepath.Base(file)))
		}
	}
	f.Add([]byte("/ 0 40755 2 0 0 0 0.0 - - -\n/a 5 100644 1 0 0 0 1.2 - hello -\n/b 0 @100644 1 0 0 0 0.0 /a - -\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		root, err := Parse(bytes.NewReader(data), false)
		if err != nil {
			return
		}
		img, err := composefs.BuildImage(root)
		if err != nil {
			return
		}
		back, err := composefs.ReadImage(img)
		if err != nil {
			t.Fatalf("image we wrote does not read back: %v", err)
		}
		dense, err := composefs.BuildImage(root, composefs.WithDenseInodes())
		if err != nil {
			t.Fatalf("the tree builds as mkcomposefs does but not with dense inodes: %v", err)
		}
		if err := sameTree(back, dense); err != nil {
			t.Fatalf("dense image: %v", err)
		}
		img2, err := composefs.BuildImage(back)
		if err != nil {
			t.Fatalf("tree read back does not build: %v", err)
		}
		// An image does not keep everything a dump says (e.g. the size of a FIFO, which still
		// decides the inode format), so the first round trip may normalise; after it the
		// bytes must be stable.
		back2, err := composefs.ReadImage(img2)
		if err != nil {
			t.Fatalf("rebuilt image does not read back: %v", err)
		}
		img3, err := composefs.BuildImage(back2)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(img2, img3) {
			t.Fatalf("image -> tree -> image is not stable")
		}
		var d bytes.Buffer
		if err := Write(&d, back); err != nil {
			t.Fatal(err)
		}
		if _, err := Parse(&d, true); err != nil {
			t.Fatalf("our own dump does not parse strictly: %v\n%s", err, d.Bytes())
		}
	})
}
