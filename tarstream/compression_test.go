package tarstream

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/errdefs"
)

// TestDecompress: plain, gzip and zstd streams all come back as the bytes that went in, each
// recognised by Sniff from its first bytes.
func TestDecompress(t *testing.T) {
	plain := oddTar(t)
	var gz, zs bytes.Buffer
	gw := gzip.NewWriter(&gz)
	gw.Write(plain)
	gw.Close()
	zw, err := zstd.NewWriter(&zs)
	if err != nil {
		t.Fatal(err)
	}
	zw.Write(plain)
	zw.Close()
	for _, c := range []struct {
		name string
		in   []byte
		kind Compression
	}{{"plain", plain, Plain}, {"gzip", gz.Bytes(), Gzip}, {"zstd", zs.Bytes(), Zstd}, {"empty", nil, Plain}} {
		if got := Sniff(c.in[:min(len(c.in), SniffLen)]); got != c.kind {
			t.Errorf("%s: Sniff = %d, want %d", c.name, got, c.kind)
		}
		rc, err := Decompress(bytes.NewReader(c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		out, err := io.ReadAll(rc)
		rc.Close()
		want := plain
		if c.in == nil {
			want = nil
		}
		if err != nil || !bytes.Equal(out, want) {
			t.Fatalf("%s: %d bytes back (%v), want %d", c.name, len(out), err, len(want))
		}
	}
	if _, err := Decompress(bytes.NewReader([]byte{0x1f, 0x8b, 0, 0})); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("truncated gzip header: %v, want ErrInvalid", err)
	}
}
