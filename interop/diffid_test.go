package interop

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/internal/testkit"
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
	checkMismatchAllowed(t, p, dir, tree, m)
}

// checkMismatchAllowed: `kura pull --allow-diffid-mismatch` of podman's zstd:chunked image warns
// with the layer and both DiffIDs and stores it; fsck calls the store clean and a checkout is
// the imported tree. `kura copy --allow-diffid-mismatch` writes a consistent image that podman
// pulls, with the same files.
func checkMismatchAllowed(t *testing.T, p *podmanEnv, dir, tree string, m *layer.DiffIDMismatchError) {
	t.Helper()
	kura := func(args ...string) (string, string) {
		t.Helper()
		cmd := exec.Command(testkit.Kura(t), append([]string{"--root", filepath.Join(dir, "store")}, args...)...)
		cmd.Env = append(os.Environ(), "HOME="+dir)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("kura %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
		}
		return stdout.String(), stderr.String()
	}
	zc := "oci:" + filepath.Join(dir, "zc") + ":v1"
	_, stderr := kura("pull", "-q", "--allow-diffid-mismatch", "--name", "mismatched", zc)
	for _, want := range []string{"WARNING", m.Got.String(), m.Want.String()} {
		if !strings.Contains(stderr, want) {
			t.Errorf("pull --allow-diffid-mismatch: stderr lacks %q:\n%s", want, stderr)
		}
	}
	kura("fsck")
	out := filepath.Join(dir, "checkout")
	kura("checkout", "mismatched", out)
	checkSameTree(t, tree, out)

	// podman names an image pulled from oci: after its path, which must be lowercase.
	lower, err := os.MkdirTemp("", "kura-diffid-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(lower) })
	fixed := "oci:" + filepath.Join(lower, "fixed") + ":v1"
	kura("copy", "--allow-diffid-mismatch", zc, fixed)
	id := strings.TrimSpace(p.run(t, "pull", "-q", fixed))
	mnt := strings.TrimSpace(p.run(t, "image", "mount", id))
	checkSameTree(t, tree, mnt)
	p.run(t, "image", "unmount", id)
}

// checkSameTree compares the regular files of two trees, want's all present in got.
func checkSameTree(t *testing.T, want, got string) {
	t.Helper()
	n := 0
	err := filepath.WalkDir(want, func(path string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, _ := filepath.Rel(want, path)
		a, _ := os.ReadFile(path)
		b, err := os.ReadFile(filepath.Join(got, rel))
		if err != nil || !bytes.Equal(a, b) {
			t.Errorf("%s: %d bytes in %s (%v), want %d", rel, len(b), got, err, len(a))
		}
		n++
		return nil
	})
	if err != nil || n == 0 {
		t.Fatalf("walking %s: %v (%d files)", want, err, n)
	}
}
