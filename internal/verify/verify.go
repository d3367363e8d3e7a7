// Package verify owns the verifying reader every untrusted byte stream goes through: limited to
// the size it is expected to have, its digest checked at EOF, a mismatch reported as a typed
// error of class errdefs.ErrDigestMismatch (the model is go-containerregistry's internal/verify).
package verify

import (
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// MismatchError says how content differed from the size and digest it was expected to have. It
// is of class errdefs.ErrDigestMismatch.
type MismatchError struct {
	Want digest.Digest
	Size int64 // the expected size
	// Read is how many bytes were read: Size+1 when the content was longer than Size.
	Read int64
	// Got is the content's digest; empty when the size already differed.
	Got digest.Digest
}

func (e *MismatchError) Error() string {
	switch {
	case e.Read > e.Size:
		return fmt.Sprintf("blob %s: more than the expected %d bytes", e.Want, e.Size)
	case e.Read != e.Size:
		return fmt.Sprintf("blob %s: got %d bytes, want %d", e.Want, e.Read, e.Size)
	}
	return fmt.Sprintf("blob %s: content has digest %s", e.Want, e.Got)
}

// Is makes the error match errdefs.ErrDigestMismatch.
func (e *MismatchError) Is(target error) bool { return target == errdefs.ErrDigestMismatch }

// Reader reads r, which must hold exactly size bytes with digest want. It reads one byte past
// size, so an oversized stream fails (with a *MismatchError) instead of being cut short; only a
// read that returns io.EOF has delivered verified content. Close closes closer, which may be nil.
type Reader struct {
	r      io.Reader
	closer io.Closer
	want   digest.Digest
	size   int64
	h      hash.Hash
	n      int64
	err    error
}

// NewReader returns a verifying reader of r. A negative size or a digest whose algorithm is not
// available fails the first read (wrapping errdefs.ErrInvalid or errdefs.ErrUnsupported), so
// callers that validated their descriptor need no error path here.
func NewReader(r io.Reader, closer io.Closer, size int64, want digest.Digest) *Reader {
	v := &Reader{r: r, closer: closer, want: want, size: size}
	switch {
	case size < 0:
		v.err = fmt.Errorf("blob %s: size %d: %w", want, size, errdefs.ErrInvalid)
	case !want.Algorithm().Available():
		v.err = fmt.Errorf("blob %s: digest algorithm %q: %w", want, want.Algorithm(), errdefs.ErrUnsupported)
	default:
		v.h = want.Algorithm().Hash()
	}
	return v
}

// ReadCloser is NewReader for a stream that closes itself.
func ReadCloser(rc io.ReadCloser, size int64, want digest.Digest) *Reader {
	return NewReader(rc, rc, size, want)
}

// Read reads at most size+1 bytes of content; at EOF it returns io.EOF if size and digest
// matched, else a *MismatchError. Errors stick.
func (v *Reader) Read(p []byte) (int, error) {
	if v.err != nil {
		return 0, v.err
	}
	if rem := v.size - v.n + 1; int64(len(p)) > rem {
		p = p[:rem]
	}
	n, err := v.r.Read(p)
	v.n += int64(n)
	if v.n > v.size {
		v.err = &MismatchError{Want: v.want, Size: v.size, Read: v.n}
		return 0, v.err
	}
	v.h.Write(p[:n])
	if errors.Is(err, io.EOF) {
		v.err = v.verdict()
		return n, v.err
	}
	if err != nil {
		v.err = err
	}
	return n, err
}

// verdict is io.EOF for content of the expected size and digest, else a *MismatchError.
func (v *Reader) verdict() error {
	if v.n != v.size {
		return &MismatchError{Want: v.want, Size: v.size, Read: v.n}
	}
	if got := digest.NewDigest(v.want.Algorithm(), v.h); got != v.want {
		return &MismatchError{Want: v.want, Size: v.size, Read: v.n, Got: got}
	}
	return io.EOF
}

// Close closes the underlying stream, if it was given one.
func (v *Reader) Close() error {
	if v.closer == nil {
		return nil
	}
	return v.closer.Close()
}
