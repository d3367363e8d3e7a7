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
// TOCs; records of deleted layers only linger until the next rebuild (FindChunk checks that the
// object exists, and callers re-hash the bytes before use). PutLayer adds each new layer, so a
// pull decodes no TOC of its own to find chunks. Nothing is fsynced: a crash leaves at worst an
// old or unreadable cache.
const chunkIndexFile = "chunk-index"

var chunkIndexMagic = []byte("KURACIX1")

type chunkKey struct {
	d    [sha256.Size]byte
	size int64
}

type chunkIndex struct {
	layers map[digest.Digest]bool
	m      map[chunkKey]chunkRecord
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
	// Records of deleted layers would pile up: start over when layers went away.
	if len(idx.layers) > 0 {
		current := map[digest.Digest]bool{}
		for _, l := range layers {
			current[l] = true
		}
		for l := range idx.layers {
			if !current[l] {
				idx = newChunkIndex()
				s.chunks = idx
				break
			}
		}
	}
	added := false
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

func newChunkIndex() *chunkIndex {
	return &chunkIndex{layers: map[digest.Digest]bool{}, m: map[chunkKey]chunkRecord{}}
}

// add records the chunks of the multi-chunk files of a layer.
func (idx *chunkIndex) add(layer digest.Digest, entries []layerfs.Entry) {
	idx.layers[layer] = true
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
				idx.m[key] = chunkRecord{object: obj, offset: c.Offset}
			}
		}
	}
}

// indexLayerChunks adds a newly recorded layer to the index file (loading the file first if this
// handle has not), so that later pulls find its chunks without decoding its TOC.
func (s *Store) indexLayerChunks(layer digest.Digest, entries []layerfs.Entry) {
	s.chunksMu.Lock()
	defer s.chunksMu.Unlock()
	if s.chunks == nil {
		s.chunks = s.loadChunkIndex()
	}
	s.chunks.add(layer, entries)
	s.saveChunkIndex(s.chunks)
}

const chunkRecordSize = sha256.Size + 8 + sha256.Size + 8

// loadChunkIndex reads the index file; anything unreadable gives an empty index.
func (s *Store) loadChunkIndex() *chunkIndex {
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
		layers[digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(p[:sha256.Size]))] = true
		p = p[sha256.Size:]
	}
	nr := int(binary.LittleEndian.Uint32(p))
	p = p[4:]
	if nr < 0 || len(p) != nr*chunkRecordSize {
		return idx
	}
	m := make(map[chunkKey]chunkRecord, nr)
	for range nr {
		var k chunkKey
		var r chunkRecord
		copy(k.d[:], p)
		k.size = int64(binary.LittleEndian.Uint64(p[32:]))
		copy(r.object[:], p[40:])
		r.offset = int64(binary.LittleEndian.Uint64(p[72:]))
		m[k] = r
		p = p[chunkRecordSize:]
	}
	idx.layers, idx.m = layers, m
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
		b = append(b, k.d[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(k.size))
		b = append(b, r.object[:]...)
		b = binary.LittleEndian.AppendUint64(b, uint64(r.offset))
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
	}
}

func rawSHA256(d digest.Digest) ([sha256.Size]byte, bool) {
	var raw [sha256.Size]byte
	if !digests.IsSHA256(d) {
		return raw, false
	}
	n, err := hex.Decode(raw[:], []byte(d.Encoded()))
	return raw, err == nil && n == sha256.Size
}
