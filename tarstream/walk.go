package tarstream

import (
	"archive/tar"
	"bufio"
	"bytes"
	"fmt"
	"hash/crc64"
	"io"

	vtar "github.com/vbatts/tar-split/archive/tar"

	"github.com/kura-oci/kura/errdefs"
)

// WalkRaw parses an uncompressed tar stream once and writes its tar-split JSON to tarSplit with
// the same entries, in the same order, as tar-split's asm.NewInputTarStream emits them (which the
// reference uses), without asm's second parse and pipe. For every entry it calls fn with the
// header, the raw bytes preceding the payload (previous padding, extension records, header; only
// valid during the call) and the payload. At the end it calls tail with the raw bytes the tar
// reader consumed after the last payload (padding, end-of-archive blocks) and the trailing bytes
// it did not (rest, which tail must read to EOF).
func WalkRaw(r io.Reader, tarSplit io.Writer, fn func(hdr *vtar.Header, raw []byte, payload io.Reader) error, tail func(raw []byte, rest io.Reader) error) error {
	// Packer writes what storage's JSON packer would, without encoding/json's reflection;
	// write errors stick in bw and surface at the flush.
	bw := bufio.NewWriterSize(tarSplit, 64<<10)
	packer := NewPacker(bw, 1024)
	segment := func(b []byte) error {
		if len(b) > 0 {
			packer.Segment(b)
		}
		return nil
	}
	tr := vtar.NewReader(r)
	tr.RawAccounting = true
	crc := crc64.New(CRCTable)
	var pending []byte // raw bytes seen after a payload, before the next header's
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return fmt.Errorf("reading tar: %w: %w", errdefs.ErrInvalid, err)
		}
		raw := tr.RawBytes()
		if err := segment(raw); err != nil {
			return err
		}
		if len(pending) > 0 {
			raw = append(pending, raw...)
			pending = nil
		}
		crc.Reset()
		payload := io.TeeReader(tr, crc)
		if err := fn(hdr, raw, payload); err != nil {
			return err
		}
		// Drain what fn left so the next header is found.
		if _, err := io.Copy(io.Discard, payload); err != nil {
			return fmt.Errorf("reading tar: %w: %w", errdefs.ErrInvalid, err)
		}
		var sum []byte
		if hdr.Size > 0 {
			sum = crc.Sum(nil)
		}
		if err := packer.File(hdr.Name, hdr.Size, sum); err != nil {
			return fmt.Errorf("recording tar-split for %q: %w: %w", hdr.Name, errdefs.ErrInvalid, err)
		}
		if b := tr.RawBytes(); len(b) > 0 {
			if err := segment(b); err != nil {
				return err
			}
			pending = bytes.Clone(b)
		}
	}
	raw := tr.RawBytes()
	if err := segment(raw); err != nil {
		return err
	}
	raw = append(pending, raw...)
	rest := &segmentingReader{r: r, segment: segment}
	if err := tail(raw, rest); err != nil {
		return err
	}
	// Make sure tar-split saw everything even if tail stopped early.
	if _, err := io.Copy(io.Discard, rest); err != nil {
		return err
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("recording tar-split: %w", err)
	}
	return nil
}

// MaxTrailer bounds the bytes a layer may carry after the end of its tar archive. Tools pad to a
// record (10 KiB) or a little more; anything past the bound would only grow the tar-split (every
// trailing byte is kept to rebuild the DiffID), so a compressed run of zeros there is a bomb.
const MaxTrailer = 8 << 20

// segmentingReader records every read of the bytes after the archive as a tar-split segment, in
// reads of at most 1 MiB as asm does.
type segmentingReader struct {
	r       io.Reader
	segment func([]byte) error
	n       int64
}

func (s *segmentingReader) Read(p []byte) (int, error) {
	n, err := s.r.Read(p[:min(len(p), 1<<20)])
	if s.n += int64(n); s.n > MaxTrailer {
		return n, fmt.Errorf("more than %d bytes after the end of the tar archive: %w", MaxTrailer, errdefs.ErrInvalid)
	}
	if n > 0 {
		if serr := s.segment(p[:n]); serr != nil {
			return n, serr
		}
	}
	return n, err
}

// Walk reads an uncompressed tar stream to EOF (trailing zero blocks included), writes its
// tar-split JSON stream to tarSplit exactly as the reference writer does (so Rebuild gives back
// the bit-exact tar) and calls fn for every entry. fn may read the payload of regular files; what
// it leaves is drained.
func Walk(r io.Reader, tarSplit io.Writer, fn func(hdr *tar.Header, payload io.Reader) error) error {
	return WalkRaw(r, tarSplit,
		func(hdr *vtar.Header, _ []byte, payload io.Reader) error { return fn(StdHeader(hdr), payload) },
		func(_ []byte, rest io.Reader) error { _, err := io.Copy(io.Discard, rest); return err })
}

// CRCTable is the CRC-64 table tar-split uses for file payload checksums.
var CRCTable = crc64.MakeTable(crc64.ISO)

// StdHeader converts a header of the tar-split fork of archive/tar to the standard type.
func StdHeader(h *vtar.Header) *tar.Header {
	return &tar.Header{
		Typeflag:   h.Typeflag,
		Name:       h.Name,
		Linkname:   h.Linkname,
		Size:       h.Size,
		Mode:       h.Mode,
		Uid:        h.Uid,
		Gid:        h.Gid,
		Uname:      h.Uname,
		Gname:      h.Gname,
		ModTime:    h.ModTime,
		AccessTime: h.AccessTime,
		ChangeTime: h.ChangeTime,
		Devmajor:   h.Devmajor,
		Devminor:   h.Devminor,
		Xattrs:     h.Xattrs, //nolint:staticcheck // kept for callers that still read it
		PAXRecords: h.PAXRecords,
		Format:     tar.Format(h.Format),
	}
}
