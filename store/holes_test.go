package store_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
)

// Zeros written to an object, in any pieces, leave holes; the content reads back right and df
// reports the allocation beside the apparent size.
func TestObjectZerosAreHoles(t *testing.T) {
	ctx := context.Background()
	s := teststore.Open(t, teststore.Synced(), teststore.Locked())
	content := make([]byte, 32<<20)
	copy(content[5000:], "data in the middle of a block")
	copy(content[len(content)-10:], "tail bytes")
	want := digest.FromBytes(content)
	w, err := s.Ingest(ctx, want, int64(len(content)))
	if err != nil {
		t.Fatal(err)
	}
	for p := content; len(p) > 0; { // odd-sized writes: blocks straddle them
		k := min(len(p), 77777)
		if _, err := w.Write(p[:k]); err != nil {
			t.Fatal(err)
		}
		p = p[k:]
	}
	if _, err := w.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	path, _ := s.ObjectPath(want)
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	if st.Size != int64(len(content)) || st.Blocks*512 > 1<<20 {
		t.Fatalf("object of %d bytes has %d allocated", st.Size, st.Blocks*512)
	}
	rc, err := s.Open(ctx, want)
	if err != nil {
		t.Fatal(err)
	}
	var got bytes.Buffer
	got.ReadFrom(rc)
	rc.Close()
	if !bytes.Equal(got.Bytes(), content) {
		t.Fatal("content differs")
	}
	var allocated int64
	s.Walk(ctx, func(i store.Info) error { allocated += i.Allocated; return nil })
	if allocated != st.Blocks*512 {
		t.Fatalf("Walk reports %d allocated, stat %d", allocated, st.Blocks*512)
	}
}
