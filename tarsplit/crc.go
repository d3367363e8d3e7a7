package tarsplit

import (
	"fmt"
	"hash/crc64"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/tarstream"
)

// OpenCRC returns a CRCFunc that reads content through open (a store's Open, say) and computes
// its tar-split checksum. The content must be exactly the size the TOC gives.
func OpenCRC(open func(d digest.Digest) (io.ReadCloser, error)) CRCFunc {
	return func(d digest.Digest, size int64) ([]byte, error) {
		rc, err := open(d)
		if err != nil {
			return nil, err
		}
		defer rc.Close()
		h := crc64.New(tarstream.CRCTable)
		n, err := io.Copy(h, io.LimitReader(rc, size+1))
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", d, err)
		}
		if n != size {
			return nil, fmt.Errorf("content %s has %d bytes, the TOC says %d: %w", d, n, size, errdefs.ErrDigestMismatch)
		}
		return h.Sum(nil), nil
	}
}
