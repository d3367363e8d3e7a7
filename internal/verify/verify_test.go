package verify

import (
	"bytes"
	"errors"
	"io"
	"testing"
	"testing/iotest"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

func TestReader(t *testing.T) {
	content := []byte("hello, verified world")
	d := digest.FromBytes(content)
	cases := []struct {
		name    string
		in      []byte
		size    int64
		want    digest.Digest
		class   error // nil: reads to io.EOF
		readMax int   // the most bytes the reader may deliver
	}{
		{"match", content, int64(len(content)), d, nil, len(content)},
		{"short", content[:5], int64(len(content)), d, errdefs.ErrDigestMismatch, 5},
		{"long", append(bytes.Clone(content), 'x'), int64(len(content)), d, errdefs.ErrDigestMismatch, len(content)},
		{"altered", bytes.ToUpper(content), int64(len(content)), d, errdefs.ErrDigestMismatch, len(content)},
		{"negative size", content, -1, d, errdefs.ErrInvalid, 0},
		{"unknown algorithm", content, int64(len(content)), digest.Digest("md5:0123"), errdefs.ErrUnsupported, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := NewReader(iotest.OneByteReader(bytes.NewReader(c.in)), nil, c.size, c.want)
			got, err := io.ReadAll(v)
			if c.class == nil && err != nil {
				t.Fatalf("ReadAll: %v", err)
			}
			if c.class != nil && !errors.Is(err, c.class) {
				t.Fatalf("ReadAll: %v, want %v", err, c.class)
			}
			if len(got) > c.readMax {
				t.Fatalf("delivered %d bytes, at most %d expected", len(got), c.readMax)
			}
			if c.class == errdefs.ErrDigestMismatch {
				var me *MismatchError
				if !errors.As(err, &me) || me.Want != c.want || me.Size != c.size {
					t.Fatalf("error %#v, want a *MismatchError for %s/%d", err, c.want, c.size)
				}
			}
			if _, again := v.Read(make([]byte, 1)); c.class != nil && !errors.Is(again, c.class) {
				t.Fatalf("second read: %v, want the same error again", again)
			}
		})
	}
}

type closeCount struct {
	io.Reader
	n int
}

func (c *closeCount) Close() error { c.n++; return nil }

func TestReadCloserCloses(t *testing.T) {
	rc := &closeCount{Reader: bytes.NewReader(nil)}
	v := ReadCloser(rc, 0, digest.FromBytes(nil))
	if _, err := io.ReadAll(v); err != nil {
		t.Fatalf("empty content: %v", err)
	}
	if err := v.Close(); err != nil || rc.n != 1 {
		t.Fatalf("Close: %v, underlying closed %d times", err, rc.n)
	}
	if err := NewReader(bytes.NewReader(nil), nil, 0, digest.FromBytes(nil)).Close(); err != nil {
		t.Fatalf("Close without a closer: %v", err)
	}
}
