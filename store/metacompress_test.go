package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"testing"

	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/store"
)

// windowOf returns the window the first frame of zst declares (its content size when it is
// one segment).
func windowOf(t *testing.T, zst []byte) uint64 {
	t.Helper()
	var h zstd.Header
	if err := h.Decode(zst); err != nil {
		t.Fatal(err)
	}
	if h.SingleSegment {
		return h.FrameContentSize
	}
	return h.WindowSize
}

// metadataJSON is a few megabytes of tar-split-like JSON lines.
func metadataJSON() []byte {
	var b bytes.Buffer
	for i := 0; b.Len() < 3<<20; i++ {
		fmt.Fprintf(&b, `{"type":2,"payload":"dXN0YXIAMDAwMDY0NAAwMDAwMDAwADAw%08d","position":%d}`+"\n", i, 2*i)
	}
	return b.Bytes()
}

// A producer's frame with a large window is re-framed with the store's small one, with the
// same content; the store's own frames are kept as they are; a damaged frame is invalid.
func TestNarrowMetadataFrame(t *testing.T) {
	raw := metadataJSON()
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedBetterCompression), zstd.WithWindowSize(8<<20))
	if err != nil {
		t.Fatal(err)
	}
	var wide bytes.Buffer
	enc.Reset(&wide)
	enc.Write(raw)
	enc.Close()
	if w := windowOf(t, wide.Bytes()); w != 8<<20 {
		t.Fatalf("test frame declares %d, want 8 MiB", w)
	}
	got, err := store.NarrowMetadataFrame(wide.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if w := windowOf(t, got); w > 128<<10 {
		t.Errorf("re-framed window %d, want at most 128 KiB", w)
	}
	dec, _ := zstd.NewReader(nil)
	defer dec.Close()
	if back, err := dec.DecodeAll(got, nil); err != nil || !bytes.Equal(back, raw) {
		t.Errorf("re-framed content differs (%v)", err)
	}

	own, _, err := store.CompressMetadataStream(func(w io.Writer) error { _, err := w.Write(raw); return err })
	if err != nil {
		t.Fatal(err)
	}
	if w := windowOf(t, own); w > 128<<10 {
		t.Errorf("the store's own frame declares %d, want at most 128 KiB", w)
	}
	if kept, err := store.NarrowMetadataFrame(own); err != nil || !bytes.Equal(kept, own) {
		t.Errorf("the store's own frame was not kept as it is (%v)", err)
	}

	bad := bytes.Clone(wide.Bytes())
	bad[len(bad)/2] ^= 0xff
	if _, err := store.NarrowMetadataFrame(bad); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("damaged frame: %v, want ErrInvalid", err)
	}
	if _, err := store.NarrowMetadataFrame([]byte("not zstd")); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("not a frame: %v, want ErrInvalid", err)
	}
}
