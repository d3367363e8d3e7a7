package tarstream

import (
	"bufio"
	"bytes"
	"fmt"
	"io"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/kura-oci/kura/errdefs"
)

// Compression is how a layer stream is compressed, as its first bytes tell.
type Compression int

const (
	// Plain is an uncompressed tar (or anything that starts with neither magic).
	Plain Compression = iota
	// Gzip starts with gzip's magic.
	Gzip
	// Zstd starts with a zstd frame's magic (zstd:chunked blobs included).
	Zstd
)

// SniffLen is how many leading bytes Sniff needs to tell every compression apart.
const SniffLen = 4

var (
	magicGzip = []byte{0x1f, 0x8b}
	magicZstd = []byte{0x28, 0xb5, 0x2f, 0xfd}
)

// Sniff tells the compression of a stream from its first bytes (up to SniffLen; fewer when
// the stream is shorter).
func Sniff(head []byte) Compression {
	switch {
	case bytes.HasPrefix(head, magicGzip):
		return Gzip
	case bytes.HasPrefix(head, magicZstd):
		return Zstd
	}
	return Plain
}

// Decompress returns the uncompressed tar stream of r, which may be plain, gzip or zstd (detected
// by magic bytes).
func Decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(SniffLen)
	if err != nil && err != io.EOF {
		return nil, err
	}
	switch Sniff(head) {
	case Gzip:
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, fmt.Errorf("gzip input: %w: %w", errdefs.ErrInvalid, err)
		}
		return zr, nil
	case Zstd:
		zr, err := zstd.NewReader(br, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return nil, fmt.Errorf("zstd input: %w", err)
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}
