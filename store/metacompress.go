package store

import (
	"bytes"
	"fmt"
	"io"
	"sync"

	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/iocount"
)

// The store's metadata files (toc.json.zst, tar-split.json.zst) are plain zstd frames: any
// level reads back the same, so the level is a choice of CPU against disk, made per caller.

// newMetadataEncoder is the encoder of the store's metadata files. Lower memory: fresh buffers
// cost page faults, and metadata repeats within a short distance.
//
// The window is small (metaWindow) because a reader streaming the file holds the window its
// frame declares: an update pull streams the predecessor's tar-split (11.7 MB of JSON in the
// bench corpus) at its peak of memory, and with zstd's default of 4–8 MiB the decoder's history
// was 5.5 MB of that peak. JSON lines repeat within a few lines, so the small window costs
// nothing: on that tar-split, at the fastest level, 521,790 bytes in 8 ms with 128 KiB against
// 534,751 bytes in 23 ms with the level's default 4 MiB. A frame without a content size (streamed)
// or larger than the window is then never decoded whole (worthStreaming).
func newMetadataEncoder(w io.Writer, level zstd.EncoderLevel) (*zstd.Encoder, error) {
	return zstd.NewWriter(w, zstd.WithEncoderLevel(level), zstd.WithEncoderConcurrency(1),
		zstd.WithLowerEncoderMem(true), zstd.WithWindowSize(metaWindow))
}

// metaWindow is the zstd window of the metadata files Kura compresses.
const metaWindow = 128 << 10

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

// NarrowMetadataFrame returns zst, a zstd-compressed metadata file from elsewhere (the
// tar-split frame of a zstd:chunked blob), as the store should keep it: as it is when its first
// frame declares a window no larger than the store's own (metaWindow) or holds its whole content
// in one segment, else decompressed and compressed again with the store's window. A producer's
// frame declares up to 8 MiB, which every later update pull predicting from this layer would
// hold while it streams the file; re-framing it once, in the cold pull that fetched it, costs a
// few tens of milliseconds. The JSON is unchanged byte for byte.
func NarrowMetadataFrame(zst []byte) ([]byte, error) {
	var h zstd.Header
	if err := h.Decode(zst); err != nil {
		return nil, fmt.Errorf("metadata frame: %w: %w", errdefs.ErrInvalid, err)
	}
	if h.SingleSegment || h.WindowSize <= metaWindow {
		return zst, nil
	}
	dec, err := zstd.NewReader(bytes.NewReader(zst), zstd.WithDecoderConcurrency(1),
		zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxMemory(maxMetaSize))
	if err != nil {
		return nil, err
	}
	defer dec.Close()
	out, _, err := CompressMetadataStream(func(w io.Writer) error {
		_, err := io.Copy(w, io.LimitReader(dec, maxMetaSize))
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("metadata frame: %w: %w", errdefs.ErrInvalid, err)
	}
	return out, nil
}
