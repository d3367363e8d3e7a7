package lazy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/internal/testkit/teststore"
)

// TestCreateThenDamagedRecord: Create leaves a whole record (and nothing in the store's tmp/);
// the same record truncated, as a power loss before its data reached the disk could have left
// it without the fsyncs, is refused by Open with ErrInvalid, never taken for a pull.
func TestCreateThenDamagedRecord(t *testing.T) {
	s := teststore.Open(t)
	manifest := []byte(`{"schemaVersion":2}`)
	id := digest.FromBytes(manifest)
	p, err := Create(s, id, Record{Name: "x", Manifest: manifest, Config: []byte(`{}`)}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if p.Name != "x" || p.ID != id {
		t.Fatalf("created %+v", p)
	}
	if n, err := s.TempFiles(); err != nil || n != 0 {
		t.Fatalf("temp files after Create: %d, %v", n, err)
	}
	rec := filepath.Join(p.Dir, recordName)
	b, err := os.ReadFile(rec)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(rec, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(rec, b[:len(b)/2], 0o444); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(s, id); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Open of a truncated record: %v; want ErrInvalid", err)
	}
	if _, err := FindByName(s, "x"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("FindByName over a truncated record: %v; want ErrNotFound", err)
	}
}

// TestPlaceholderDirectoriesSpread: each pending layer's placeholder directory is the top of a
// directory hierarchy for ext4's allocator (FS_TOPDIR_FL), so its fan-out directories, and
// their placeholders, go to the emptiest block groups rather than to the ones a removal freed
// last (the store under test lives on this machine's ext4).
func TestPlaceholderDirectoriesSpread(t *testing.T) {
	s := teststore.Open(t)
	manifest := []byte(`{"schemaVersion":2}`)
	layer := digest.FromString("layer")
	p, err := Create(s, digest.FromBytes(manifest), Record{Name: "x", Manifest: manifest, Config: []byte(`{}`), Pending: []digest.Digest{layer}},
		map[digest.Digest][]byte{layer: []byte("toc")})
	if err != nil {
		t.Fatal(err)
	}
	if !testkit.TopDir(t, p.DataDir(layer)) {
		t.Fatal("the placeholder directory does not carry FS_TOPDIR_FL")
	}
}
