package store

import (
	"os"
	"sync"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/verity"
)

// Scratch creates a file in the store's temp directory to assemble an object in before it is
// ingested (pieces that arrive out of order, holes left where zeros go). The batch owns it:
// DropScratch removes it as soon as it is ingested, and Commit or Abort removes any left, so a
// failed import leaves nothing behind (and a crash only temp files, which gc removes).
func (b *Batch) Scratch() (*os.File, error) {
	f, err := os.CreateTemp(b.s.TempDir(), "scratch-")
	if err != nil {
		return nil, err
	}
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	if b.rec.scratch == nil {
		b.rec.scratch = map[string]bool{}
	}
	b.rec.scratch[f.Name()] = true
	return f, nil
}

// DropScratch removes a scratch file of the batch.
func (b *Batch) DropScratch(name string) error {
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	if !b.rec.scratch[name] {
		return nil
	}
	delete(b.rec.scratch, name)
	return os.Remove(name)
}

// batchRecord is what a batch knows about its own work: the objects it wrote or found stored
// (Stored) and the fs-verity digests of those it wrote, so the layer recorded from it needs
// neither a lookup nor a read of them; whether it committed; and its scratch files.
type batchRecord struct {
	mu        sync.Mutex
	objects   map[digest.Digest]bool
	verities  map[digest.Digest]verity.Digest
	committed bool
	scratch   map[string]bool
}

// noteVerity keeps the fs-verity digest a writer of the batch computed while d streamed in.
func (r *batchRecord) noteVerity(d digest.Digest, v verity.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.verities == nil {
		r.verities = map[digest.Digest]verity.Digest{}
	}
	r.verities[d] = v
}

// noteObject records that d is stored once the batch commits: the batch wrote it, or found it
// stored under the lock its caller holds (which keeps gc away).
func (r *batchRecord) noteObject(d digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.objects == nil {
		r.objects = map[digest.Digest]bool{}
	}
	r.objects[d] = true
}

// settle ends the batch: scratch files go, and committed says whether its objects are stored.
func (r *batchRecord) settle(committed bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.committed = committed
	for name := range r.scratch {
		os.Remove(name)
	}
	r.scratch = nil
}

// written splits objs into those the committed batch wrote and the rest, which the caller must
// look up. A batch that did not commit vouches for nothing.
func (r *batchRecord) written(objs []digest.Digest) (rest []digest.Digest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if !r.committed {
		return objs
	}
	for _, d := range objs {
		if !r.objects[d] {
			rest = append(rest, d)
		}
	}
	return rest
}

// verity returns the fs-verity digest a writer of the batch computed for d.
func (r *batchRecord) verity(d digest.Digest) (verity.Digest, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	v, ok := r.verities[d]
	return v, ok
}

// verity is batchRecord.verity for a batch that may be nil.
func (b *Batch) verity(d digest.Digest) (verity.Digest, bool) {
	if b == nil {
		return verity.Digest{}, false
	}
	return b.rec.verity(d)
}

// Stored says whether object d is stored, looking it up through od, and the batch remembers a
// yes: the caller holds a store lock for the batch's life, under which no object is removed,
// so a layer recorded from this batch need not look d up a second time. It is exported for the
// partial import's plan (package store/layer), which asks it of every object of the layer.
func (b *Batch) Stored(od *ObjectDir, d digest.Digest) bool {
	if !od.has(d) {
		return false
	}
	b.rec.noteObject(d)
	return true
}
