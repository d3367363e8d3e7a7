package store

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
)

// chunkIndex maps chunk digests to where the store holds those bytes. It is derived from the
// layer TOCs (which already record every chunk's object, offset and size), so it needs no
// on-disk state of its own and gc never has to sweep it; it is rebuilt when the set of layers
// changes.
type chunkIndex struct {
	layers string // sorted DiffIDs the index was built from
	m      map[chunkKey]ChunkLocation
}

type chunkKey struct {
	d    digest.Digest
	size int64
}

func (s *Store) invalidateChunks() {
	s.chunksMu.Lock()
	s.chunks = nil
	s.chunksMu.Unlock()
}

// FindChunk implements ChunkFinder. The bytes found are only a hint: callers re-hash them before
// use, as the object may have been damaged since.
func (s *Store) FindChunk(ctx context.Context, chunk digest.Digest, size int64) (ChunkLocation, error) {
	layers, err := s.Layers(ctx)
	if err != nil {
		return ChunkLocation{}, err
	}
	key := make([]string, len(layers))
	for i, l := range layers {
		key[i] = l.Encoded()
	}
	k := strings.Join(key, ",")

	s.chunksMu.Lock()
	defer s.chunksMu.Unlock()
	if s.chunks == nil || s.chunks.layers != k {
		idx := &chunkIndex{layers: k, m: map[chunkKey]ChunkLocation{}}
		for _, l := range layers {
			toc, err := s.LayerTOC(ctx, l)
			if err != nil {
				continue // a layer deleted meanwhile; fsck reports damaged ones
			}
			addChunks(idx.m, toc)
		}
		s.chunks = idx
	}
	loc, ok := s.chunks.m[chunkKey{chunk, size}]
	if !ok || !s.HasObject(loc.Object) {
		return ChunkLocation{}, fmt.Errorf("chunk %s (%d bytes): %w", chunk, size, errdefs.ErrNotFound)
	}
	return loc, nil
}

func addChunks(m map[chunkKey]ChunkLocation, toc *chunked.TOC) {
	var obj digest.Digest
	for i := range toc.Entries {
		e := &toc.Entries[i]
		switch e.Type {
		case chunked.TypeReg:
			obj = ""
			if d, err := digest.Parse(e.Digest); err == nil && e.Size > 0 {
				obj = d
				m[chunkKey{d, e.Size}] = ChunkLocation{Object: d, Offset: 0, Size: e.Size}
			}
			if obj != "" && e.ChunkDigest != "" {
				if c, err := digest.Parse(e.ChunkDigest); err == nil && e.ChunkSize > 0 {
					m[chunkKey{c, e.ChunkSize}] = ChunkLocation{Object: obj, Offset: 0, Size: e.ChunkSize}
				}
			}
		case chunked.TypeChunk:
			if obj == "" || e.ChunkDigest == "" || e.ChunkSize <= 0 {
				continue
			}
			if c, err := digest.Parse(e.ChunkDigest); err == nil {
				m[chunkKey{c, e.ChunkSize}] = ChunkLocation{Object: obj, Offset: e.ChunkOffset, Size: e.ChunkSize}
			}
		default:
			obj = ""
		}
	}
}
