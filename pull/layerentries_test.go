package pull

import (
	"context"
	"reflect"
	"sync"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerfs"
)

// handed records what WithLayerEntries gives: the entries and the verdict, per layer.
type handed struct {
	mu       sync.Mutex
	entries  map[digest.Digest][]layerfs.Entry
	recorded map[digest.Digest]bool
}

func (h *handed) fn(diffID, _ digest.Digest, entries []layerfs.Entry) func(bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.entries[diffID] = entries
	return func(ok bool) { h.mu.Lock(); h.recorded[diffID] = ok; h.mu.Unlock() }
}

// TestLayerEntriesHandedOver: a partial pull hands each layer's entries over before recording it,
// then says it recorded the layer with them (they are the stored layer's); a layer whose DiffID
// does not match is said not recorded.
func TestLayerEntriesHandedOver(t *testing.T) {
	img := buildImage(t, tarOf(t, genTree(0)))
	dir := t.TempDir()
	img.writeLayout(t, dir, "x")
	s := teststore.Open(t)
	h := &handed{entries: map[digest.Digest][]layerfs.Entry{}, recorded: map[digest.Digest]bool{}}
	if _, err := pullRef(t, s, "oci:"+dir+":x", nil, WithLayerEntries(h.fn)); err != nil {
		t.Fatal(err)
	}
	d := img.diffIDs[0]
	stored, err := s.LayerEntries(context.Background(), d)
	if err != nil {
		t.Fatal(err)
	}
	if !h.recorded[d] || len(stored) == 0 || !reflect.DeepEqual(h.entries[d], stored) {
		t.Fatalf("handed %d entries, recorded %v; want the %d stored ones, recorded", len(h.entries[d]), h.recorded[d], len(stored))
	}

	bad := digest.FromString("something else")
	img.promiseDiffID(bad)
	img.writeLayout(t, dir, "bad")
	h = &handed{entries: map[digest.Digest][]layerfs.Entry{}, recorded: map[digest.Digest]bool{}}
	if _, err := pullRef(t, teststore.Open(t), "oci:"+dir+":bad", nil, WithLayerEntries(h.fn)); err == nil {
		t.Fatal("a pull with a wrong DiffID succeeded")
	}
	if ok, told := h.recorded[bad]; !told || ok || h.entries[bad] == nil {
		t.Fatalf("wrong DiffID: handed %d entries, told %v, recorded %v; want handed and told not recorded", len(h.entries[bad]), told, ok)
	}
}
