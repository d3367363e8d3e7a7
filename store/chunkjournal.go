package store

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"
)

// The chunk index file is not rewritten for each new layer: PutLayer appends the layer's records
// to a journal beside it, chunkJournalFile, one sealed segment per layer, and the journal is folded
// into chunkIndexFile (a whole rewrite) only when it has grown past the file itself, or when a
// refresh must rewrite the index anyway (layers went away). The cost of recording a layer is then
// its own records, amortised, not the store's.
//
// A segment is "KURACIXJ", the layer's raw sha256, a little-endian uint32 record count, the
// records (as in chunkIndexFile) and the sha256 of all of that. Reading stops at the first segment
// that does not check out (a torn append): the layers it and later ones held are not covered, so
// a refresh adds them from their TOCs, as for any layer the cache lacks. Code that predates the
// journal ignores it and adds those layers from their TOCs; records it lists twice are harmless
// (first one wins; every hit is re-hashed). Nothing is fsynced: it is a cache.
const chunkJournalFile = "chunk-index.journal"

var chunkJournalMagic = []byte("KURACIXJ")

// chunkJournalMin is the journal size below which it is never folded into the index file.
const chunkJournalMin = 1 << 20

// chunkEntry is one record of the index with its key.
type chunkEntry struct {
	key chunkKey
	rec chunkRecord
}

// appendChunkRecords appends one record in the index files' encoding.
func appendChunkRecord(b []byte, k chunkKey, r chunkRecord) []byte {
	b = append(b, k.d[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(k.size))
	b = append(b, r.object[:]...)
	return binary.LittleEndian.AppendUint64(b, uint64(r.offset))
}

// decodeChunkRecord decodes one record of chunkRecordSize bytes.
func decodeChunkRecord(p []byte) (chunkKey, chunkRecord) {
	var k chunkKey
	var r chunkRecord
	copy(k.d[:], p)
	k.size = int64(binary.LittleEndian.Uint64(p[32:]))
	copy(r.object[:], p[40:])
	r.offset = int64(binary.LittleEndian.Uint64(p[72:]))
	return k, r
}

// journalLayer records a layer the index has just added: appended to the journal, or, once the
// journal outgrows the index file, the whole index rewritten and the journal dropped.
func (s *Store) journalLayer(idx *chunkIndex, layer digest.Digest, recs []chunkEntry) {
	raw, ok := rawSHA256(layer)
	if !ok {
		return
	}
	seg := make([]byte, 0, len(chunkJournalMagic)+sha256.Size+4+len(recs)*chunkRecordSize+sha256.Size)
	seg = append(seg, chunkJournalMagic...)
	seg = append(seg, raw[:]...)
	seg = binary.LittleEndian.AppendUint32(seg, uint32(len(recs)))
	for _, e := range recs {
		seg = appendChunkRecord(seg, e.key, e.rec)
	}
	sum := sha256.Sum256(seg)
	seg = append(seg, sum[:]...)
	// No index file yet (the store's first such layer, or an unreadable one): write it whole.
	if idx.base == 0 || idx.journal+int64(len(seg)) > max(idx.base, chunkJournalMin) {
		s.saveChunkIndex(idx)
		return
	}
	f, err := os.OpenFile(filepath.Join(s.root, chunkJournalFile), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return
	}
	// One write: appends of several processes do not interleave within a segment.
	if n, err := f.Write(seg); err == nil && n == len(seg) {
		idx.journal += int64(n)
	}
	f.Close()
}

// loadChunkJournal adds the journal's segments to idx, up to the first one that does not check
// out, and notes the journal's size.
func (s *Store) loadChunkJournal(idx *chunkIndex) {
	b, err := os.ReadFile(filepath.Join(s.root, chunkJournalFile))
	if err != nil {
		return
	}
	idx.journal = int64(len(b))
	head := len(chunkJournalMagic) + sha256.Size + 4
	for len(b) >= head+sha256.Size && bytes.HasPrefix(b, chunkJournalMagic) {
		n := int(binary.LittleEndian.Uint32(b[head-4:]))
		end := head + n*chunkRecordSize
		if n < 0 || n > (len(b)-head-sha256.Size)/chunkRecordSize {
			return
		}
		if sum := sha256.Sum256(b[:end]); !bytes.Equal(sum[:], b[end:end+sha256.Size]) {
			return
		}
		idx.layers[digestOfRaw(b[len(chunkJournalMagic):])] = true
		for p := b[head:end]; len(p) > 0; p = p[chunkRecordSize:] {
			k, r := decodeChunkRecord(p)
			if _, dup := idx.m[k]; !dup {
				idx.m[k] = r
			}
		}
		b = b[end+sha256.Size:]
	}
}

// removeChunkJournal drops the journal once the index file holds everything it held.
// A journal that cannot be removed only repeats records the index holds.
func (s *Store) removeChunkJournal() { os.Remove(filepath.Join(s.root, chunkJournalFile)) }

// digestOfRaw names the sha256 digest whose raw bytes start p.
func digestOfRaw(p []byte) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(p[:sha256.Size]))
}
