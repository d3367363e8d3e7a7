package chunked

import (
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"
)

// Encoders and decoders are pooled: a level-10 encoder holds ~34 MiB of match tables whose first
// use costs page faults, and pulls decode many small files, so setting them up per layer or per
// file would dominate small jobs. An encoder's output does not depend on its previous use.

var encoderPools sync.Map // level → *sync.Pool of *zstd.Encoder

func getEncoder(level int) (*zstd.Encoder, error) {
	p, _ := encoderPools.LoadOrStore(level, &sync.Pool{})
	if e, ok := p.(*sync.Pool).Get().(*zstd.Encoder); ok {
		return e, nil
	}
	return newEncoder(level)
}

// putEncoder returns an encoder whose last stream ended without error.
func putEncoder(level int, e *zstd.Encoder) {
	e.Reset(nil)
	p, _ := encoderPools.LoadOrStore(level, &sync.Pool{})
	p.(*sync.Pool).Put(e)
}

var decoderPool sync.Pool // of *zstd.Decoder

// getDecoder returns a decoder reading r, with a bounded window and no goroutines.
func getDecoder(r io.Reader) (*zstd.Decoder, error) {
	if d, ok := decoderPool.Get().(*zstd.Decoder); ok {
		if err := d.Reset(r); err == nil {
			return d, nil
		}
	}
	// Low memory: a file's frames are small, and fresh buffers cost page faults.
	return zstd.NewReader(r, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderLowmem(true))
}

func putDecoder(d *zstd.Decoder) { decoderPool.Put(d) }
