package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/layerfs"
)

// The chunk index maps the digests of the chunks of large files (TOC "chunk" entries) to where
// the store holds those bytes, so that a pull can reuse chunks of files that changed. Whole
// files need no index: a chunk that is a whole file is found as an object.
//
// It is derived from the layer TOCs and kept in one file, chunkIndexFile, as a cache: a binary
// list of the layers it covers and of its records, sealed by a sha256. A missing, torn or
// foreign file is rebuilt from the TOCs; layers the file does not cover are added from their
// TOCs; when layers went away, their records whose objects are gone are dropped (FindChunk
// checks that the object exists, and callers re-hash the bytes before use). PutLayer adds each
// new layer, through a journal (chunkjournal.go) rather than a rewrite, so a pull decodes no TOC
// of its own to find chunks. Nothing is fsynced: a crash leaves at worst an old or unreadable
// cache.
const chunkIndexFile = "chunk-index"

var chunkIndexMagic = []byte("KURACIX1")

type chunkKey struct {
	d    [sha256.Size]byte
	size int64
}

type chunkIndex struct {
	layers map[digest.Digest]bool
	m      map[chunkKey]chunkRecord
	// base and journal are the sizes of the index file and of its journal as last read or
	// written: the journal is folded in when it outgrows the file.
	base, journal int64
}

type chunkRecord struct {
	object [sha256.Size]byte
	offset int64
}

func (s *Store) invalidateChunks() {
	s.chunksMu.Lock()
	s.chunks, s.chunksRefreshed = nil, false
	s.chunksMu.Unlock()
}

// FindChunk finds stored bytes by chunk digest, only a hint: callers re-hash them before
// use, as the object may have been damaged since.
func (s *Store) FindChunk(ctx context.Context, chunk digest.Digest, size int64) (ChunkLocation, error) {
	notFound := fmt.Errorf("chunk %s (%d bytes): %w", chunk, size, errdefs.ErrNotFound)
	raw, ok := rawSHA256(chunk)
	if !ok || size <= 0 {
		return ChunkLocation{}, notFound
	}
	if info, err := s.Stat(ctx, chunk); err == nil && info.Size == size {
		return ChunkLocation{Object: chunk, Size: size}, nil
	}
	s.chunksMu.Lock()
	defer s.chunksMu.Unlock()
	// Once per handle: a plan asks for many chunks. Layers another process records meanwhile
	// are missed until the next handle, which costs reuse, never correctness.
	if !s.chunksRefreshed {
		if err := s.refreshChunks(ctx); err != nil {
			return ChunkLocation{}, err
		}
		s.chunksRefreshed = true
	}
	r, ok := s.chunks.m[chunkKey{raw, size}]
	if !ok {
		return ChunkLocation{}, notFound
	}
	obj := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(r.object[:]))
	if !s.HasObject(obj) {
		return ChunkLocation{}, notFound
	}
	return ChunkLocation{Object: obj, Offset: r.offset, Size: size}, nil
}

// refreshChunks makes s.chunks cover every stored layer: it loads the index file, adds the
// layers it lacks from their TOCs, and rewrites the file if it added any. Callers hold chunksMu.
func (s *Store) refreshChunks(ctx context.Context) error {
	layers, err := s.Layers(ctx)
	if err != nil {
		return err
	}
	if s.chunks == nil {
		s.chunks = s.loadChunkIndex()
	}
	idx := s.chunks
	// Records of deleted layers would pile up: drop those whose objects went with them.
	added := idx.prune(layers, s.HasObject)
	for _, l := range layers {
		if idx.layers[l] {
			continue
		}
		entries, err := s.LayerEntries(ctx, l)
		if err != nil {
			continue // a layer deleted meanwhile; fsck reports damaged ones
		}
		idx.add(l, entries)
		added = true
	}
	if added {
		s.saveChunkIndex(idx)
	}
	return nil
}

// pruneChunkIndex drops from the index file the layers gc deleted and the records whose objects
// went with them, and rewrites it once. gc knows every object it kept, so this costs no stat;
// left to the next pull, the prune would stat every record's object and rewrite the file there,
// in the pull's time, after every gc that freed a layer.
func (x *Exclusive) pruneChunkIndex(r *reach) {
	x.chunksMu.Lock()
	defer x.chunksMu.Unlock()
	idx := x.chunks
	if idx == nil {
		idx = x.loadChunkIndex()
	}
	kept := make([]digest.Digest, 0, len(r.layers))
	for l := range r.layers {
		kept = append(kept, l)
	}
	// A journal is folded in too: a gc killed between its rewrite of the index and the journal's
	// removal leaves one, and the retry must leave what an uninterrupted gc leaves.
	if idx.prune(kept, func(o digest.Digest) bool { return r.objects[o] }) || idx.journal > 0 {
		x.saveChunkIndex(idx)
	}
	x.chunks = idx
}

func newChunkIndex() *chunkIndex {
	return &chunkIndex{layers: map[digest.Digest]bool{}, m: map[chunkKey]chunkRecord{}}
}

// prune forgets the layers that are no longer stored and, if there were any, the records whose
// objects are gone (one stat per object): the records left still point at stored bytes, which
// is all a hint needs, and no TOC is decoded again. It reports whether it changed idx.
func (idx *chunkIndex) prune(layers []digest.Digest, hasObject func(digest.Digest) bool) bool {
	current := make(map[digest.Digest]bool, len(layers))
	for _, l := range layers {
		current[l] = true
	}
	gone := false
	for l := range idx.layers {
		if !current[l] {
			delete(idx.layers, l)
			gone = true
		}
	}
	if !gone {
		return false
	}
	stored := map[[sha256.Size]byte]bool{}
	for k, r := range idx.m {
		has, seen := stored[r.object]
		if !seen {
			has = hasObject(digestOfRaw(r.object[:]))
			stored[r.object] = has
		}
		if !has {
			delete(idx.m, k)
		}
	}
	return true
}

// add records the chunks of the multi-chunk files of a layer, and returns the records it added.
func (idx *chunkIndex) add(layer digest.Digest, entries []layerfs.Entry) []chunkEntry {
	idx.layers[layer] = true
	var added []chunkEntry
	for i := range entries {
		e := &entries[i]
		// Only files cut into several chunks have chunks worth indexing.
		if len(e.Chunks) < 2 {
			continue
		}
		obj, ok := rawSHA256(e.Digest)
		if !ok {
			continue
		}
		for k, c := range e.Chunks {
			// A hole has no bytes in the object worth finding (the first chunk, as the TOC's
			// file row, is recorded whatever it holds).
			if c.Zeros && k > 0 {
				continue
			}
			raw, ok := rawSHA256(c.Digest)
			if !ok {
				continue
			}
			key := chunkKey{raw, c.Size}
			if _, dup := idx.m[key]; !dup {
				r := chunkRecord{object: obj, offset: c.Offset}
				idx.m[key] = r
				added = append(added, chunkEntry{key, r})
			}
		}
	}
	return added
}

// indexLayerChunks adds a newly recorded layer to the index file (loading the file first if this
// handle has not), so that later pulls find its chunks without decoding its TOC.
func (s *Store) indexLayerChunks(layer digest.Digest, entries []layerfs.Entry) {
	s.chunksMu.Lock()
	defer s.chunksMu.Unlock()
	if s.chunks == nil {
		s.chunks = s.loadChunkIndex()
	}
	if s.chunks.layers[layer] {
		return
	}
	s.journalLayer(s.chunks, layer, s.chunks.add(layer, entries))
}

const chunkRecordSize = sha256.Size + 8 + sha256.Size + 8

// loadChunkIndex reads the index file and its journal.
func (s *Store) loadChunkIndex() *chunkIndex {
	idx := s.loadChunkIndexFile()
	s.loadChunkJournal(idx)
	return idx
}

// loadChunkIndexFile reads the index file; anything unreadable gives an empty index.
func (s *Store) loadChunkIndexFile() *chunkIndex {
	idx := newChunkIndex()
	b, err := os.ReadFile(filepath.Join(s.root, chunkIndexFile))
	if err != nil || len(b) < len(chunkIndexMagic)+8+sha256.Size || !bytes.HasPrefix(b, chunkIndexMagic) {
		return idx
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	if got := sha256.Sum256(body); !bytes.Equal(got[:], sum) {
		return idx
	}
	p := body[len(chunkIndexMagic):]
	nl := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if nl < 0 || len(p) < nl*sha256.Size+4 {
		return idx
	}
	layers := map[digest.Digest]bool{}
	for range nl {
		layers[digestOfRaw(p)] = true
		p = p[sha256.Size:]
	}
	nr := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if nr < 0 || len(p) != nr*chunkRecordSize {
		return idx
	}
	m := make(map[chunkKey]chunkRecord, nr)
	for range nr {
		k, r := decodeChunkRecord(p)
		m[k] = r
		p = p[chunkRecordSize:]
	}
	idx.layers, idx.m, idx.base = layers, m, int64(len(b))
	return idx
}

// saveChunkIndex writes the index file (temp file and rename; a failure only loses the cache).
func (s *Store) saveChunkIndex(idx *chunkIndex) {
	layers := make([]digest.Digest, 0, len(idx.layers))
	for l := range idx.layers {
		layers = append(layers, l)
	}
	slices.Sort(layers)
	b := make([]byte, 0, len(chunkIndexMagic)+8+len(layers)*sha256.Size+len(idx.m)*chunkRecordSize+sha256.Size)
	b = append(b, chunkIndexMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(layers)))
	for _, l := range layers {
		raw, ok := rawSHA256(l)
		if !ok {
			return
		}
		b = append(b, raw[:]...)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(idx.m)))
	for k, r := range idx.m {
		b = appendChunkRecord(b, k, r)
	}
	sum := sha256.Sum256(b)
	b = append(b, sum[:]...)
	f, err := os.CreateTemp(filepath.Join(s.root, dirTmp), "chunk-index-")
	if err != nil {
		return
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), filepath.Join(s.root, chunkIndexFile))
	}
	if err != nil {
		os.Remove(f.Name())
		return
	}
	// The file now holds what the journal held (and what this handle knew besides).
	s.removeChunkJournal()
	idx.base, idx.journal = int64(len(b)), 0
}

func rawSHA256(d digest.Digest) ([sha256.Size]byte, bool) {
	var raw [sha256.Size]byte
	if !digests.IsSHA256(d) {
		return raw, false
	}
	n, err := hex.Decode(raw[:], []byte(d.Encoded()))
	return raw, err == nil && n == sha256.Size
}
