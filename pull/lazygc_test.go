package pull

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
)

// TestLazyGCWhilePending: a gc asked (through a handle of its own, as `kura gc` would) while a
// lazy pull is served with its bulk fetch held back completes while the pull is still pending
// (the service holds the store's shared lock only per fill, so gc's gate does not wait for the
// whole pull, nor make every other pull wait that long), frees no object the pending pull's TOC
// names, and the pull then fills more files and completes with its DiffID.
func TestLazyGCWhilePending(t *testing.T) {
	// The config's program is stored by the pull itself (a fill's commit follows its reader).
	e, p := newLazyEnvOf(t, genTree(0), func(c *ocispec.Image) { c.Config.Cmd = []string{"/etc/version"} })
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	e.readWhole(t, "usr/lib/big.so", "through the mount")
	entries, err := p.Entries(e.img.diffIDs[0])
	if err != nil {
		t.Fatal(err)
	}
	var stored []digest.Digest
	for _, d := range layerfs.Objects(entries) {
		if e.s.HasObject(d) {
			stored = append(stored, d)
		}
	}
	if len(stored) == 0 {
		t.Fatal("no object of the pending layer is stored after the pull")
	}

	gcStore, err := store.Open(e.s.Root())
	if err != nil {
		t.Fatal(err)
	}
	gcDone := make(chan error, 1)
	go func() {
		_, err := gcStore.GC(context.Background())
		gcDone <- err
	}()
	select {
	case err := <-gcDone:
		if err != nil {
			t.Fatalf("gc while a lazy pull is pending: %v", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("gc still waits after a minute: the pending lazy pull holds the store's lock")
	}
	for _, d := range stored {
		if !e.s.HasObject(d) {
			t.Fatalf("gc freed object %s, which the pending pull needs", d)
		}
	}
	e.readWhole(t, "usr/lib/blob.bin", "after gc")
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
}
