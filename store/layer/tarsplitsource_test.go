package layer

import (
	"bytes"
	"errors"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// TestWithRealCRCs: a placeholder is found by its address, in every entry that carries it
// (two files with the same new content share one), and replaced in a copy: the entries the
// rebuild reads stay as they were. A CRC that equals a placeholder's bytes is left alone, and a
// placeholder that no entry carries is an error.
func TestWithRealCRCs(t *testing.T) {
	a, b := make([]byte, 8), make([]byte, 8)
	known := []byte{0, 0, 0, 0, 0, 0, 0, 0} // a known CRC with the placeholder's bytes
	entries := []storage.Entry{
		{Type: storage.SegmentType, Payload: []byte("hdr")},
		{Type: storage.FileType, Name: "x", Size: 1, Payload: a},
		{Type: storage.FileType, Name: "y", Size: 1, Payload: known},
		{Type: storage.FileType, Name: "z", Size: 1, Payload: a},
		{Type: storage.FileType, Name: "w", Size: 2, Payload: b},
		{Type: storage.FileType, Name: "empty"},
	}
	pending := []pendingCRC{{d: "sha256:aa", size: 1, slot: &a[0]}, {d: "sha256:bb", size: 2, slot: &b[0]}}
	crc := func(d digest.Digest, size int64) ([]byte, error) { return []byte(string(d)[7:] + "______"), nil }
	out, err := withRealCRCs(entries, pending, crc)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"hdr", "aa______", "\x00\x00\x00\x00\x00\x00\x00\x00", "aa______", "bb______", ""}
	for i, w := range want {
		if string(out[i].Payload) != w {
			t.Errorf("entry %d: payload %q, want %q", i, out[i].Payload, w)
		}
	}
	if !bytes.Equal(entries[1].Payload, make([]byte, 8)) || &entries[1].Payload[0] != &a[0] {
		t.Error("the prediction's own entries were changed")
	}
	lost := []pendingCRC{{d: "sha256:cc", size: 1, slot: &make([]byte, 8)[0]}}
	if _, err := withRealCRCs(entries, append(pending, lost...), crc); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("a placeholder in no entry: %v", err)
	}
}
