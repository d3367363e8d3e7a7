// Package verity computes fs-verity file digests in user space (sha256, 4096-byte blocks, no salt), the
// digest the kernel reports with FS_IOC_MEASURE_VERITY and overlayfs checks against a metacopy xattr.
package verity

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"sync"

	"github.com/kura-oci/kura/errdefs"
)

// BlockSize is the Merkle tree block size; 4096 is what composefs and the kernel default use.
const BlockSize = 4096

// Size is the length of a digest in bytes.
const Size = sha256.Size

const hashesPerBlock = BlockSize / Size

// Digest is an fs-verity sha256 digest. It is not the sha256 of the content.
type Digest [Size]byte

// String returns the digest as 64 lowercase hex digits, as `fsverity digest` prints it.
func (d Digest) String() string { return hex.EncodeToString(d[:]) }

// IsZero reports whether d is the zero value (no digest).
func (d Digest) IsZero() bool { return d == Digest{} }

// ParseDigest parses 64 hex digits.
func ParseDigest(s string) (Digest, error) {
	var d Digest
	if len(s) != 2*Size {
		return d, fmt.Errorf("fs-verity digest %q: want %d hex digits, got %d: %w", s, 2*Size, len(s), errdefs.ErrInvalid)
	}
	if _, err := hex.Decode(d[:], []byte(s)); err != nil {
		return d, fmt.Errorf("fs-verity digest %q: %v: %w", s, err, errdefs.ErrInvalid)
	}
	return d, nil
}

// Hasher computes an fs-verity digest over everything written to it. It keeps one partial block
// per Merkle tree level, so memory stays small for any file size. The zero value is not usable;
// call New.
type Hasher struct {
	h      hash.Hash
	size   uint64
	block  []byte     // partial data block
	levels [][]byte   // per level: hashes waiting to fill a tree block
	counts []uint64   // per level: hashes ever added
	sum    [Size]byte // scratch
}

// New returns a Hasher for an empty file.
func New() *Hasher {
	return &Hasher{h: sha256.New(), block: make([]byte, 0, BlockSize)}
}

// Write adds content; it never fails.
func (v *Hasher) Write(p []byte) (int, error) {
	n := len(p)
	v.size += uint64(n)
	for len(p) > 0 {
		if len(v.block) == 0 && len(p) >= BlockSize {
			v.addHash(0, v.hashBlock(p[:BlockSize]))
			p = p[BlockSize:]
			continue
		}
		k := copy(v.block[len(v.block):BlockSize], p)
		v.block = v.block[:len(v.block)+k]
		p = p[k:]
		if len(v.block) == BlockSize {
			v.addHash(0, v.hashBlock(v.block))
			v.block = v.block[:0]
		}
	}
	return n, nil
}

// hashBlock hashes one block, zero-padded to BlockSize.
func (v *Hasher) hashBlock(b []byte) []byte {
	v.h.Reset()
	v.h.Write(b)
	if len(b) < BlockSize {
		var zero [BlockSize]byte
		v.h.Write(zero[:BlockSize-len(b)])
	}
	return v.h.Sum(v.sum[:0])
}

// addHash appends a hash to a level, hashing the level's block into the next level when it fills.
func (v *Hasher) addHash(level int, sum []byte) {
	for len(v.levels) <= level {
		v.levels = append(v.levels, make([]byte, 0, BlockSize))
		v.counts = append(v.counts, 0)
	}
	v.levels[level] = append(v.levels[level], sum...)
	v.counts[level]++
	if len(v.levels[level]) == BlockSize {
		full := v.levels[level]
		v.levels[level] = full[:0]
		v.addHash(level+1, v.hashBlock(full))
	}
}

// Size returns the number of bytes written so far.
func (v *Hasher) Size() uint64 { return v.size }

// Digest returns the fs-verity digest of what was written. It does not change the state, so
// writing may continue.
func (v *Hasher) Digest() Digest { return v.clone().finish() }

// finish completes the tree in place and returns the digest; v is spent afterwards (until Reset).
// FromReader uses it directly to avoid Digest's copy of the partial blocks.
func (v *Hasher) finish() Digest {
	var root [64]byte
	if len(v.block) > 0 {
		v.addHash(0, v.hashBlock(v.block))
	}
	// The root is the single hash of the first level that has exactly one; every level below it
	// gets its last partial block hashed (zero-padded) into the next.
	for level := 0; level < len(v.levels); level++ {
		if v.counts[level] == 1 {
			copy(root[:], v.levels[level][:Size])
			break
		}
		if len(v.levels[level]) > 0 {
			partial := v.levels[level]
			v.levels[level] = partial[:0]
			v.addHash(level+1, v.hashBlock(partial))
		}
	}
	// struct fsverity_descriptor: version, hash algorithm, log2(block size), salt size,
	// reserved u32, data size u64 LE, root hash[64], salt[32], reserved[144].
	var desc [256]byte
	desc[0] = 1
	desc[1] = 1 // FS_VERITY_HASH_ALG_SHA256
	desc[2] = 12
	binary.LittleEndian.PutUint64(desc[8:], v.size)
	copy(desc[16:80], root[:])
	return sha256.Sum256(desc[:])
}

// Reset returns v to the state of New, keeping its buffers, so that one Hasher can digest many
// files without allocating for each.
func (v *Hasher) Reset() {
	v.size = 0
	v.block = v.block[:0]
	for i := range v.levels {
		v.levels[i] = v.levels[i][:0]
		v.counts[i] = 0
	}
}

func (v *Hasher) clone() *Hasher {
	c := &Hasher{h: sha256.New(), size: v.size, block: append(make([]byte, 0, BlockSize), v.block...)}
	for i := range v.levels {
		c.levels = append(c.levels, append(make([]byte, 0, BlockSize), v.levels[i]...))
		c.counts = append(c.counts, v.counts[i])
	}
	return c
}

// copyBufSize is the read size of FromReader: large enough that a file costs few read calls.
const copyBufSize = 256 << 10

// readers pools what FromReader needs per call (a Hasher and a read buffer): digesting a tree of
// many small files otherwise allocates a quarter megabyte per file, and the garbage collector
// then costs more CPU than the hashing.
var readers = sync.Pool{New: func() any {
	return &reader{h: New(), buf: make([]byte, copyBufSize)}
}}

type reader struct {
	h   *Hasher
	buf []byte
}

// FromReader returns the digest of everything r yields.
func FromReader(r io.Reader) (Digest, error) {
	rd := readers.Get().(*reader)
	defer readers.Put(rd)
	rd.h.Reset()
	for {
		n, err := r.Read(rd.buf)
		rd.h.Write(rd.buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			return Digest{}, fmt.Errorf("computing fs-verity digest: %w", err)
		}
	}
	return rd.h.finish(), nil
}

// FromBytes returns the digest of b.
func FromBytes(b []byte) Digest {
	h := New()
	h.Write(b)
	return h.Digest()
}

// FromFile returns the digest of the file at path (its content, as `fsverity digest` computes it).
func FromFile(path string) (Digest, error) {
	f, err := os.Open(path)
	if err != nil {
		return Digest{}, fmt.Errorf("computing fs-verity digest: %w", err)
	}
	defer f.Close()
	d, err := FromReader(f)
	if err != nil {
		return Digest{}, fmt.Errorf("%s: %w", path, err)
	}
	return d, nil
}

// MetacopyXattr returns the 36-byte value of trusted.overlay.metacopy that asks overlayfs to check
// an object's fs-verity digest: struct ovl_metacopy {version 0, len 36, flags 0, algo sha256}.
func MetacopyXattr(d Digest) []byte {
	v := make([]byte, 4+Size)
	v[0] = 0
	v[1] = byte(len(v))
	v[2] = 0
	v[3] = 1 // FS_VERITY_HASH_ALG_SHA256
	copy(v[4:], d[:])
	return v
}
