package layer_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store/layer"
)

// TestImportXattrNameNotUTF8: a tar whose xattr name is not UTF-8 cannot be recorded (a TOC
// cannot carry the name exactly); the import says it is unsupported, not that the layer must be
// pulled whole (it is whole already), and stores no layer.
func TestImportXattrNameNotUTF8(t *testing.T) {
	s := teststore.Open(t)
	tb := tartest.Tar(t, tartest.File("etc/a", "x").Xattr("user.\xff", "v"))
	unlock, err := s.RLock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	_, err = layer.Import(context.Background(), s, bytes.NewReader(tb), layer.Options{})
	if !errors.Is(err, errdefs.ErrUnsupported) || errors.Is(err, errdefs.ErrNeedFull) {
		t.Fatalf("import of an xattr name that is not UTF-8: %v; want unsupported, not need-full", err)
	}
	if layers, err := s.Layers(context.Background()); err != nil || len(layers) != 0 {
		t.Fatalf("layers after a refused import: %v, %v", layers, err)
	}
}
