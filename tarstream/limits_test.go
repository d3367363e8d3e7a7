package tarstream

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

// A tar-split read line by line (a stored one, for prediction) has its lines capped like a
// fetched one's, blank lines included: a tar-split of nothing but newlines cannot keep the reader
// busy.
func TestLineReaderCap(t *testing.T) {
	line := []byte(`{"type":2,"payload":"AAAA","position":0}` + "\n")
	up := NewLineReader(append(append([]byte{}, line...), bytes.Repeat([]byte("\n"), MaxTarSplitLines)...), MaxTarSplitLines)
	if _, err := up.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Next(); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("after %d blank lines: %v, want ErrInvalid", MaxTarSplitLines, err)
	}
	up = NewLineReader(append(append([]byte{}, line...), bytes.Repeat([]byte("\n"), 1000)...), MaxTarSplitLines)
	if _, err := up.Next(); err != nil {
		t.Fatal(err)
	}
	if _, err := up.Next(); err != io.EOF {
		t.Fatalf("after 1000 blank lines: %v, want EOF", err)
	}
}
