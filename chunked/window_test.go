package chunked

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// streamedFrame compresses data as the writer streams a file (at a faster level): one frame
// declaring the encoder's window, not its content size.
func streamedFrame(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderConcurrency(1))
	if err != nil {
		t.Fatal(err)
	}
	enc.Reset(&buf)
	if _, err := enc.ReadFrom(struct{ io.Reader }{bytes.NewReader(data)}); err != nil { // as the writer writes a file's tail
		t.Fatal(err)
	}
	if err := enc.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// A streamed frame of a small file declares a window of megabytes; decoding it declares no more
// than its content needs, and still gives the content.
func TestBoundedWindow(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	for _, size := range []int{300 << 10, 3<<20 + 5} {
		data := make([]byte, size)
		for i := range data {
			data[i] = byte(rng.IntN(16)) // compressible, with matches far back
		}
		frame := streamedFrame(t, data)
		var before zstd.Header
		if err := before.Decode(frame); err != nil || before.SingleSegment || before.WindowSize < 4<<20 {
			t.Fatalf("size %d: the writer's frame should declare a large window: %+v %v", size, before, err)
		}
		hdr := bytes.Clone(frame[:frameHeaderPeek])
		shrinkWindow(hdr, int64(size))
		var after zstd.Header
		if err := after.Decode(append(hdr, frame[frameHeaderPeek:]...)); err != nil {
			t.Fatal(err)
		}
		if after.WindowSize < uint64(max(size, 1024)) || after.WindowSize >= 2*uint64(max(size, 1024)) {
			t.Errorf("size %d: window %d after shrinking, want the power of two holding it", size, after.WindowSize)
		}
		var out bytes.Buffer
		if err := DecodeFrames(bytes.NewReader(frame), int64(size), digest.FromBytes(data), &out); err != nil {
			t.Fatalf("size %d: %v", size, err)
		}
		if !bytes.Equal(out.Bytes(), data) {
			t.Fatalf("size %d: decoded content differs", size)
		}
		// A size too small for the content is still refused, not cut short.
		if size > 1024 {
			err := DecodeFramesUnverified(bytes.NewReader(frame), int64(size/4), &bytes.Buffer{})
			if !errors.Is(err, errdefs.ErrDigestMismatch) && !errors.Is(err, errdefs.ErrInvalid) {
				t.Errorf("size %d declared as %d: %v, want a refusal", size, size/4, err)
			}
		}
	}
}

// Headers that are not a streamed frame's are left as they are.
func TestShrinkWindowLeavesOthers(t *testing.T) {
	for name, hdr := range map[string][]byte{
		"not zstd":       {1, 2, 3, 4, 0, 0x58},
		"single segment": {0x28, 0xb5, 0x2f, 0xfd, 0x20, 0x58},
		"dictionary":     {0x28, 0xb5, 0x2f, 0xfd, 0x01, 0x58},
		"small window":   {0x28, 0xb5, 0x2f, 0xfd, 0x00, 0x00},
		"short":          {0x28, 0xb5, 0x2f},
	} {
		orig := bytes.Clone(hdr)
		shrinkWindow(hdr, 100<<10)
		if !bytes.Equal(hdr, orig) {
			t.Errorf("%s: header changed to %x", name, hdr)
		}
	}
}
