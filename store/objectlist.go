package store

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
)

// A layer's object list (layers/<hex>/objects) is derived from its TOC: the distinct objects
// its regular files need, sorted, each with its size. gc's mark, df's per-image sizes and fsck's
// reference walk read it instead of decompressing and decoding the TOC, which at 200 images made
// them read 18× the bytes they read at ten. Format (see docs/design.md): the 16-byte magic, then
// one 40-byte record per object (the 32 bytes of its sha256, then its size as a big-endian
// uint64), in ascending digest order with no repeats, then the CRC-32C of everything before it
// (big-endian).
const (
	layerObjectList = "objects"
	objListMagic    = "kura-objlist-v1\n"
	objListRecord   = sha256.Size + 8
	objListSum      = 4
)

// castagnoli is the CRC-32C table: the list's checksum guards against damage (a torn or
// flipped file), not against a writer who means harm (the TOC is the truth), and CRC-32C runs
// in hardware at many times sha256's speed, which at 200 layers was a tenth of df's CPU.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// ObjectRef is an object a layer needs, with its size.
type ObjectRef struct {
	Digest digest.Digest
	Size   int64
}

// entryObjects lists the distinct objects entries need, sorted, with their sizes.
func entryObjects(entries []layerfs.Entry) []ObjectRef {
	size := make(map[digest.Digest]int64, len(entries))
	for i := range entries {
		if e := &entries[i]; e.HasContent() {
			size[e.Digest] = e.Size
		}
	}
	objs := layerfs.Objects(entries)
	out := make([]ObjectRef, len(objs))
	for i, d := range objs {
		out[i] = ObjectRef{d, size[d]}
	}
	return out
}

// encodeObjectList is the object list file of objs (sorted, distinct, sha256 digests).
func encodeObjectList(objs []ObjectRef) ([]byte, error) {
	b := make([]byte, 0, len(objListMagic)+len(objs)*objListRecord+objListSum)
	b = append(b, objListMagic...)
	for _, o := range objs {
		raw, ok := rawSHA256(o.Digest)
		if !ok {
			return nil, fmt.Errorf("object list: digest %q: %w", o.Digest, errdefs.ErrInvalid)
		}
		b = append(b, raw[:]...)
		b = binary.BigEndian.AppendUint64(b, uint64(o.Size))
	}
	return binary.BigEndian.AppendUint32(b, crc32.Checksum(b, castagnoli)), nil
}

// objectListRecords checks an object list file's magic, length, checksum, order and sizes and
// returns its records: a list that fails any check is ErrInvalid, and its readers fall back to
// the TOC.
func objectListRecords(b []byte) ([]byte, error) {
	n := len(b) - len(objListMagic) - objListSum
	if n < 0 || n%objListRecord != 0 || !bytes.HasPrefix(b, []byte(objListMagic)) {
		return nil, fmt.Errorf("object list: bad header or length %d: %w", len(b), errdefs.ErrInvalid)
	}
	body := b[:len(b)-objListSum]
	if crc32.Checksum(body, castagnoli) != binary.BigEndian.Uint32(b[len(body):]) {
		return nil, fmt.Errorf("object list: checksum mismatch: %w", errdefs.ErrInvalid)
	}
	recs := body[len(objListMagic):]
	for i := 0; i < len(recs); i += objListRecord {
		r := recs[i : i+objListRecord]
		if i > 0 && bytes.Compare(recs[i-objListRecord:i-8], r[:sha256.Size]) >= 0 {
			return nil, fmt.Errorf("object list: records out of order: %w", errdefs.ErrInvalid)
		}
		if size := binary.BigEndian.Uint64(r[sha256.Size:]); size > 1<<62 {
			return nil, fmt.Errorf("object list: size %d: %w", size, errdefs.ErrInvalid)
		}
	}
	return recs, nil
}

// recordRefs decodes checked records (see objectListRecords).
func recordRefs(recs []byte) []ObjectRef {
	out := make([]ObjectRef, 0, len(recs)/objListRecord)
	for i := 0; i < len(recs); i += objListRecord {
		r := recs[i : i+objListRecord]
		d := digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(r[:sha256.Size]))
		out = append(out, ObjectRef{d, int64(binary.BigEndian.Uint64(r[sha256.Size:]))})
	}
	return out
}

// objKey is an object's raw sha256: what gc's mark and df key their sets by, so that the
// hundreds of thousands of references a large store's lists hold cost no digest strings.
type objKey [sha256.Size]byte

func (k objKey) digest() digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(k[:]))
}

// readObjectListFile reads a layer's object list file: ErrNotFound if the layer has none
// (recorded before lists existed), ErrInvalid if it fails its checks. It returns the records.
func (s *Metadata) readObjectListFile(diffID digest.Digest) ([]byte, error) {
	dir, err := s.layerDir(diffID)
	if err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, layerObjectList))
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("layer %s: object list: %w", diffID, errdefs.ErrNotFound)
		}
		return nil, fmt.Errorf("layer %s: %w", diffID, err)
	}
	recs, err := objectListRecords(b)
	if err != nil {
		return nil, fmt.Errorf("layer %s: %w", diffID, err)
	}
	return recs, nil
}

// readObjectList is readObjectListFile, decoded.
func (s *Metadata) readObjectList(diffID digest.Digest) ([]ObjectRef, error) {
	recs, err := s.readObjectListFile(diffID)
	if err != nil {
		return nil, err
	}
	return recordRefs(recs), nil
}

// LayerObjectRefs lists the distinct objects a stored layer's files need, sorted, with their
// sizes: from the layer's object list, or, when that is missing or fails its checks, from its
// TOC (the list is derived; the TOC is the truth).
func (s *Metadata) LayerObjectRefs(ctx context.Context, diffID digest.Digest) ([]ObjectRef, error) {
	if objs, err := s.readObjectList(diffID); err == nil {
		return objs, nil
	}
	entries, err := s.LayerEntries(ctx, diffID)
	if err != nil {
		return nil, err
	}
	return entryObjects(entries), nil
}

// writeObjectList adds (or replaces) a recorded layer's object list. The layer directory is
// read-only once committed, so it is made writable for the rename and read-only again; a crash
// in between leaves a 0700 directory, which is harmless. Only exclusive-lock holders (gc, fsck
// --repair) call it: no reader is between a layer's files then.
func (x *Exclusive) writeObjectList(diffID digest.Digest, objs []ObjectRef) error {
	if err := x.check(); err != nil {
		return err
	}
	dir, err := x.layerDir(diffID)
	if err != nil {
		return err
	}
	b, err := encodeObjectList(objs)
	if err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	err = writeFileAtomic(filepath.Join(x.root, dirTmp), filepath.Join(dir, layerObjectList), b, 0o444)
	if cerr := os.Chmod(dir, 0o500); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("layer %s: writing object list: %w", diffID, err)
	}
	return nil
}

// layerObjectKeys calls fn with each object a layer needs (see LayerObjectRefs), from the
// records of its list as they are, or from its TOC when the list is missing or bad. It returns
// the objects from the TOC in that case (nil otherwise), for a caller that writes the list.
func (s *Metadata) layerObjectKeys(ctx context.Context, diffID digest.Digest, fn func(k objKey, size int64)) ([]ObjectRef, error) {
	if recs, err := s.readObjectListFile(diffID); err == nil {
		for i := 0; i < len(recs); i += objListRecord {
			fn(objKey(recs[i:i+sha256.Size]), int64(binary.BigEndian.Uint64(recs[i+sha256.Size:i+objListRecord])))
		}
		return nil, nil
	}
	entries, err := s.LayerEntries(ctx, diffID)
	if err != nil {
		return nil, err
	}
	objs := entryObjects(entries)
	for _, o := range objs {
		k, ok := rawSHA256(o.Digest)
		if !ok {
			return nil, fmt.Errorf("layer %s: object %q: %w", diffID, o.Digest, errdefs.ErrInvalid)
		}
		fn(k, o.Size)
	}
	return objs, nil
}

// layerObjectsBackfill is layerObjectKeys for gc's mark: a layer whose list is missing or bad
// gets its objects from the TOC, and the list is written so the next gc reads that instead.
func (x *Exclusive) layerObjectsBackfill(ctx context.Context, diffID digest.Digest, fn func(k objKey, size int64)) error {
	fromTOC, err := x.layerObjectKeys(ctx, diffID, fn)
	if err == nil && fromTOC != nil {
		// Best effort: a list that cannot be written costs the next gc a TOC decode, no more.
		_ = x.writeObjectList(diffID, fromTOC)
	}
	return err
}

func refDigests(objs []ObjectRef) []digest.Digest {
	out := make([]digest.Digest, len(objs))
	for i, o := range objs {
		out[i] = o.Digest
	}
	return out
}
