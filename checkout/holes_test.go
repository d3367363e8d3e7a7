package checkout_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/checkout"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// A file of data, 16 MiB of zeros and data again is stored with a hole, and every checkout
// keeps it: a copy copies only the data extents, a hardlink shares the sparse variant.
func TestCheckoutKeepsHoles(t *testing.T) {
	content := make([]byte, 16<<20+8192)
	copy(content, bytes.Repeat([]byte("head"), 1024))
	copy(content[len(content)-4096:], bytes.Repeat([]byte("tail"), 1024))
	layer := tartest.Tar(t, tartest.Bytes("sparse", content))
	work := t.TempDir()
	s := teststore.Open(t, teststore.At(filepath.Join(work, "store")))
	img := teststore.Image(t, s, layer)
	const maxAlloc = 1 << 20
	for _, link := range []checkout.LinkMode{checkout.LinkCopy, checkout.LinkAuto, checkout.LinkHardlink} {
		dir := filepath.Join(work, string(link))
		if _, err := checkout.Checkout(context.Background(), s, img, dir, checkout.Options{Link: link}); err != nil {
			t.Fatalf("--link %s: %v", link, err)
		}
		p := filepath.Join(dir, "sparse")
		var st unix.Stat_t
		if err := unix.Stat(p, &st); err != nil {
			t.Fatal(err)
		}
		if st.Blocks*512 > maxAlloc {
			t.Errorf("--link %s: %d bytes allocated for %d bytes of which 8 KiB are data", link, st.Blocks*512, st.Size)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, content) {
			t.Errorf("--link %s: content differs", link)
		}
	}
}
