package store_test

import (
	"bytes"
	"errors"
	"io"
	"os"
	"syscall"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// TestObjectDir: the fast lookups agree with the store: present objects are found with their
// size and content, absent ones are ErrNotFound, and a symlink planted as an object is refused.
func TestObjectDir(t *testing.T) {
	s := teststore.Open(t)
	teststore.Named(t, s, "one", tarOf(t, map[string][]byte{"a": []byte("alpha"), "b": []byte("bravo!")}))
	od, err := s.OpenObjectDir()
	if err != nil {
		t.Fatal(err)
	}
	defer od.Close()
	a, b, absent := digest.FromString("alpha"), digest.FromString("bravo!"), digest.FromString("nope")
	if n, err := store.ObjectDirSize(od, b); err != nil || n != 6 {
		t.Fatalf("Size(b) = %d, %v", n, err)
	}
	if m := store.ObjectDirMissing(od, []digest.Digest{a, b}); m != "" {
		t.Fatalf("Missing reports %s", m)
	}
	if m := store.ObjectDirMissing(od, []digest.Digest{a, absent, b}); m != absent {
		t.Fatalf("Missing = %q, want %s", m, absent)
	}
	if _, err := od.Open(absent); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("Open(absent): %v", err)
	}
	if _, err := od.Open("sha256:../../etc"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("Open(bad digest): %v", err)
	}
	rc, err := od.Open(a)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || string(got) != "alpha" {
		t.Fatalf("read %q, %v", got, err)
	}
	p, _ := s.ObjectPath(absent)
	os.MkdirAll(p[:len(p)-62], 0o755)
	if err := os.Symlink("/etc/passwd", p); err != nil {
		t.Fatal(err)
	}
	if store.ObjectDirHas(od, absent) {
		t.Fatal("a symlink counts as an object")
	}
	if rc, err := od.Open(absent); err == nil {
		rc.Close()
		t.Fatal("opened a symlink as an object")
	}
}

// TestWriteHole: holes written into an object read back as zeros, the digest covers them, and
// a large object keeps them as holes on disk.
func TestWriteHole(t *testing.T) {
	ctx := t.Context()
	s := teststore.Open(t)
	unlock, _ := s.RLock(ctx) // an ingest needs only the shared lock
	defer unlock()
	want := append(append(append([]byte("head"), make([]byte, 3<<20)...), []byte("tail")...), make([]byte, 8192)...)
	w, err := s.Ingest(ctx, digest.FromBytes(want), int64(len(want)))
	if err != nil {
		t.Fatal(err)
	}
	hw := w.(interface{ WriteHole(int64) error })
	w.Write([]byte("head"))
	if err := hw.WriteHole(3 << 20); err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("tail"))
	if err := hw.WriteHole(8192); err != nil {
		t.Fatal(err)
	}
	if err := hw.WriteHole(1); err == nil {
		t.Fatal("a hole past the expected size was accepted")
	}
	if _, err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	p, _ := s.ObjectPath(digest.FromBytes(want))
	got, err := os.ReadFile(p)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read back %d bytes, %v", len(got), err)
	}
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	if st.Blocks*512 >= int64(len(want))/2 {
		t.Fatalf("object of %d bytes uses %d bytes on disk: no holes", len(want), st.Blocks*512)
	}
}
