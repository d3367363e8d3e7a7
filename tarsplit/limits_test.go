package tarsplit

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/tarstream"
)

// A stored tar-split read for prediction has its lines capped like a fetched one's, blank lines
// included: a layer's tar-split of nothing but newlines cannot keep the reader busy.
func TestUnpackerLineCap(t *testing.T) {
	line := []byte(`{"type":2,"payload":"AAAA","position":0}` + "\n")
	up := newUnpacker(append(append([]byte{}, line...), bytes.Repeat([]byte("\n"), tarstream.MaxTarSplitLines)...))
	if _, err := up.next(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.next(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("after %d blank lines: %v, want ErrInvalid", tarstream.MaxTarSplitLines, err)
	}
	up = newUnpacker(append(append([]byte{}, line...), bytes.Repeat([]byte("\n"), 1000)...))
	if _, err := up.next(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.next(); err != io.EOF {
		t.Fatalf("after 1000 blank lines: %v, want EOF", err)
	}
}
