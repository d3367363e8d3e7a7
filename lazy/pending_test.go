package lazy

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
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
