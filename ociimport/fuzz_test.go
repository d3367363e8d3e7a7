package ociimport_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/ociimport"
)

// FuzzIndex feeds arbitrary index.json bytes over the real skopeo 1.9 blobs: never a panic, and
// anything imported passes fsck.
func FuzzIndex(f *testing.F) {
	src := testdata(f, "zstd-chunked/skopeo-1.9/oci-layout")
	f.Add(readFile(f, filepath.Join(src, "index.json")))
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:f5f562eba2bb3b984e3a709c32b2ac9f0fdb87d581d543f10f5381ada33da4e7","size":553}]}`))
	f.Add([]byte(`{"manifests":[{"digest":"sha256:../../etc/passwd","size":-1}]}`))
	s := teststore.Open(f)
	f.Fuzz(func(t *testing.T, index []byte) {
		dir := t.TempDir()
		if err := os.Symlink(filepath.Join(src, "blobs"), filepath.Join(dir, "blobs")); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "index.json"), index, 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := ociimport.Import(context.Background(), s, dir, "", "fuzz"); err != nil {
			return
		}
		if r, err := s.Fsck(context.Background(), false); err != nil || !r.Clean() {
			t.Fatalf("fsck after import: %v %v", r.Problems, err)
		}
	})
}
