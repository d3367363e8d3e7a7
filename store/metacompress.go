package store

import (
	"bytes"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/internal/iocount"
)

// The store's metadata files (toc.json.zst, tar-split.json.zst) are plain zstd frames: any
// level reads back the same, so the level is a choice of CPU against disk, made per caller.

// newMetadataEncoder is the encoder of the store's metadata files. Lower memory: fresh buffers
// cost page faults, and metadata repeats within a short distance.
func newMetadataEncoder(w io.Writer, level zstd.EncoderLevel) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true))
}

// streamEncoders pools the encoders of CompressMetadataStream: a pull records one tar-split per
// layer, and an encoder's tables, set up afresh each time, are pages to fault in again.
var streamEncoders sync.Pool // of *zstd.Encoder at zstd.SpeedFastest

// CompressMetadata compresses a metadata file (TOC, tar-split) as the store keeps it, for callers
// of Batch.PutLayerCompressed that hold it uncompressed.
func CompressMetadata(b []byte) []byte {
	enc, _ := newMetadataEncoder(nil, zstd.SpeedDefault)
	defer enc.Close()
	return enc.EncodeAll(b, make([]byte, 0, len(b)/8))
}

// CompressMetadataStream compresses what write writes, as it is written: the uncompressed stream
// is never held whole. It returns the compressed bytes and the uncompressed length. It runs in
// the timed path of a pull (a predicted tar-split), so it uses zstd's fastest level: a profile
// of an update pull spent 0.15 s in the default level's matcher, for a file a few percent
// smaller. Readers decode either level alike.
func CompressMetadataStream(write func(io.Writer) error) ([]byte, int64, error) {
	var out bytes.Buffer
	enc, ok := streamEncoders.Get().(*zstd.Encoder)
	if ok {
		enc.Reset(&out)
	} else {
		var err error
		if enc, err = newMetadataEncoder(&out, zstd.SpeedFastest); err != nil {
			return nil, 0, err
		}
	}
	cw := &iocount.Writer{W: enc}
	if err := write(cw); err != nil {
		enc.Close()
		return nil, 0, err
	}
	if err := enc.Close(); err != nil {
		return nil, 0, err
	}
	enc.Reset(nil)
	streamEncoders.Put(enc)
	return out.Bytes(), cw.N, nil
}
