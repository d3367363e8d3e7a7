package chunked

import (
	"crypto/sha256"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/layerfs"
)

// Chunking parameters of the reference writer. They are part of the format in practice: a chunk is
// only reusable across layers if every writer cuts at the same places.
const (
	rollsumWindow  = 64 // bytes in the rolling window; a power of two
	rollsumOffset  = 31 // added to every byte, as in bup
	rollsumBits    = 16 // cut when the low 16 bits of s2 are all ones: ~64 KiB chunks
	zerosThreshold = 1024
)

// rollsum is the bup/Perkeep rolling checksum.
type rollsum struct {
	s1, s2 uint32
	window [rollsumWindow]byte
	pos    int
}

func newRollsum() rollsum {
	return rollsum{s1: rollsumWindow * rollsumOffset, s2: rollsumWindow * (rollsumWindow - 1) * rollsumOffset}
}

func (r *rollsum) roll(c byte) {
	drop := uint32(r.window[r.pos])
	r.s1 += uint32(c) - drop
	r.s2 += r.s1 - rollsumWindow*(drop+rollsumOffset)
	r.window[r.pos] = c
	r.pos = (r.pos + 1) & (rollsumWindow - 1)
}

func (r *rollsum) atSplit() bool {
	const mask = 1<<rollsumBits - 1
	return r.s2&mask == mask
}

// rollZeros rolls n zero bytes. Once the window holds only zeros the sums stop changing, so
// rolling 64 zeros stands for any longer run.
func (r *rollsum) rollZeros(n int64) {
	for range min(n, rollsumWindow) {
		r.roll(0)
	}
}

// zeroBuf is a source of zero bytes for holes.
var zeroBuf [32 << 10]byte

// cutter cuts one file's content the way the reference writer does: a rolling checksum decides
// data chunk ends, and every maximal run of at least zerosThreshold zero bytes becomes a chunk of
// its own whose bytes are not rolled. It calls emit with the content bytes in order and cut at
// every chunk end. Like the reference it also reports empty cuts (a hole right after a rollsum
// cut, end of file right after a cut): the blob writer closes a zstd frame there too.
type cutter struct {
	rs      rollsum
	emit    func(p []byte) error
	cut     func(zeros bool) error
	started bool  // a byte was emitted; cuts before that are not reported
	zeros   int64 // a run of zeros seen but not emitted yet
}

func newCutter(emit func([]byte) error, cut func(zeros bool) error) *cutter {
	return &cutter{rs: newRollsum(), emit: emit, cut: cut}
}

func (c *cutter) write(p []byte) error {
	i := 0
	for i < len(p) {
		if p[i] == 0 {
			j := i + 1
			for j < len(p) && p[j] == 0 {
				j++
			}
			c.zeros += int64(j - i)
			i = j
			continue
		}
		if c.zeros > 0 {
			if err := c.flushZeros(); err != nil {
				return err
			}
		}
		start := i
		for i < len(p) && p[i] != 0 {
			i = c.rollUntilSplit(p, i)
			if c.rs.atSplit() {
				if err := c.emitData(p[start:i]); err != nil {
					return err
				}
				if err := c.cut(false); err != nil {
					return err
				}
				start = i
			}
		}
		if i > start {
			if err := c.emitData(p[start:i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// rollUntilSplit rolls the non-zero bytes of p from i on and returns the index after the last
// one rolled: the first zero byte, the end of p, or just after a split point. It is roll() and
// atSplit() with the state in registers: this loop sees every content byte.
func (c *cutter) rollUntilSplit(p []byte, i int) int {
	const mask = 1<<rollsumBits - 1
	rs := &c.rs
	s1, s2, pos := rs.s1, rs.s2, rs.pos
	win := &rs.window
	for ; i < len(p); i++ {
		b := p[i]
		if b == 0 {
			break
		}
		drop := uint32(win[pos&(rollsumWindow-1)])
		s1 += uint32(b) - drop
		s2 += s1 - rollsumWindow*(drop+rollsumOffset)
		win[pos&(rollsumWindow-1)] = b
		pos++
		if s2&mask == mask {
			i++
			break
		}
	}
	rs.s1, rs.s2, rs.pos = s1, s2, pos&(rollsumWindow-1)
	return i
}

func (c *cutter) emitData(p []byte) error {
	c.started = true
	return c.emit(p)
}

func (c *cutter) emitZeros(n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroBuf)))
		if err := c.emitData(zeroBuf[:k]); err != nil {
			return err
		}
		n -= k
	}
	return nil
}

// flushZeros settles the pending zero run: a hole chunk if it is long enough, else ordinary
// content that the rolling checksum sees byte by byte.
func (c *cutter) flushZeros() error {
	n := c.zeros
	c.zeros = 0
	if n >= zerosThreshold {
		if c.started {
			if err := c.cut(false); err != nil {
				return err
			}
		}
		if err := c.emitZeros(n); err != nil {
			return err
		}
		c.rs.rollZeros(n)
		return c.cut(true)
	}
	var run int64
	for ; n > 0; n-- {
		c.rs.roll(0)
		run++
		if c.rs.atSplit() {
			if err := c.emitZeros(run); err != nil {
				return err
			}
			run = 0
			if err := c.cut(false); err != nil {
				return err
			}
		}
	}
	return c.emitZeros(run)
}

// close ends the file: the reference always closes a frame at end of file once content started,
// even when that frame is empty.
func (c *cutter) close() error {
	if c.zeros > 0 {
		if err := c.flushZeros(); err != nil {
			return err
		}
	}
	if c.started {
		return c.cut(false)
	}
	return nil
}

// Chunk is one cut of a regular file's content: the model's chunk (package layerfs), so that
// what the chunker cuts is attached to an entry as it is. Zeros marks a run of ≥ 1024 zero
// bytes, which pullers make a hole; Digest is the sha256 of the chunk's bytes, zeros too.
type Chunk = layerfs.Chunk

// ChunkWriter is an io.Writer that cuts a file's content exactly as the reference writer does
// (rolling checksum per file, runs of ≥ 1024 zero bytes as zeros chunks). It forwards every byte
// to dst (which may be nil) and calls onChunk after the last byte of each chunk was forwarded.
// Memory use is constant. Use one ChunkWriter per file.
type ChunkWriter struct {
	c       *cutter
	dst     io.Writer
	onChunk func(Chunk) error
	h       hash.Hash
	off     int64 // bytes forwarded
	start   int64 // offset of the current chunk
	closed  bool
}

// NewChunkWriter returns a ChunkWriter for one file.
func NewChunkWriter(dst io.Writer, onChunk func(Chunk) error) *ChunkWriter {
	w := &ChunkWriter{dst: dst, onChunk: onChunk, h: sha256.New()}
	w.c = newCutter(w.forward, w.endChunk)
	return w
}

func (w *ChunkWriter) forward(p []byte) error {
	if w.dst != nil {
		if _, err := w.dst.Write(p); err != nil {
			return err
		}
	}
	w.h.Write(p)
	w.off += int64(len(p))
	return nil
}

func (w *ChunkWriter) endChunk(zeros bool) error {
	size := w.off - w.start
	if size == 0 {
		return nil
	}
	ch := Chunk{Offset: w.start, Size: size, Digest: digest.NewDigest(digest.SHA256, w.h), Zeros: zeros}
	w.h.Reset()
	w.start = w.off
	if w.onChunk != nil {
		return w.onChunk(ch)
	}
	return nil
}

// Write cuts and forwards p.
func (w *ChunkWriter) Write(p []byte) (int, error) {
	if w.closed {
		return 0, io.ErrClosedPipe
	}
	if err := w.c.write(p); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close ends the last chunk. It does not close dst.
func (w *ChunkWriter) Close() error {
	if w.closed {
		return nil
	}
	w.closed = true
	return w.c.close()
}
