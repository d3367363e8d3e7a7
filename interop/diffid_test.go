package interop

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/ocilayout"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// TestPullPodmanImportDiffIDMismatch (issue 18): podman 4.3's zstd:chunked writer, given a layer
// made by `podman import`, writes a blob whose tar does not hash to the config's DiffID. Kura
// refuses it (exit 5) with an error that says what the layer is, both digests and what to do;
// the same image pushed by the same podman with gzip, as the error advises, pulls.
func TestPullPodmanImportDiffIDMismatch(t *testing.T) {
	requireTools(t, "podman", "tar")
	p := newPodman(t, "localhost:1")
	dir := t.TempDir()
	// A root file system tarred as users do, `tar -C DIR -cf rootfs.tar .`: names start with "./"
	// and the first entry is "./" itself, which podman's zstd:chunked writer mishandles.
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "hello"), []byte("hello\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "etc", "big"), []byte(strings.Repeat("kura ", 40000)), 0o644); err != nil {
		t.Fatal(err)
	}
	rootfs := filepath.Join(dir, "rootfs.tar")
	run(t, os.Environ(), "tar", "-C", tree, "-cf", rootfs, ".")
	p.run(t, "import", rootfs, "localhost/diffid:imported")
	p.run(t, "push", "--compression-format", "zstd:chunked", "localhost/diffid:imported", "oci:"+filepath.Join(dir, "zc")+":v1")
	p.run(t, "push", "--compression-format", "gzip", "localhost/diffid:imported", "oci:"+filepath.Join(dir, "gz")+":v1")

	pullLayout := func(ref string) (*store.Store, error) {
		s, err := store.Open(t.TempDir(), store.WithoutSync())
		if err != nil {
			t.Fatal(err)
		}
		r, err := imageref.Parse(ref)
		if err != nil {
			t.Fatal(err)
		}
		_, err = pull.Pull(context.Background(), s, ocilayout.NewSource(r.Dir, r.Tag), pull.WithName("diffid"))
		return s, err
	}
	s, err := pullLayout("oci:" + filepath.Join(dir, "zc") + ":v1")
	var m *layer.DiffIDMismatchError
	if !errors.Is(err, errdefs.ErrDigestMismatch) || !errors.As(err, &m) || errdefs.ExitCode(err) != 5 {
		t.Fatalf("pull of podman's zstd:chunked import: got %v, want a DiffID mismatch (exit 5)", err)
	}
	for _, want := range []string{"zstd:chunked layer", "containers/storage", m.Got.String(), m.Want.String(), "--compression-format=gzip"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error lacks %q: %v", want, err)
		}
	}
	if ids, _ := s.Images(context.Background()); len(ids) != 0 {
		t.Errorf("an image was recorded: %v", ids)
	}
	if _, err := pullLayout("oci:" + filepath.Join(dir, "gz") + ":v1"); err != nil {
		t.Fatalf("pull of the same image pushed with gzip: %v", err)
	}
}
