package chunked

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"fmt"
	"hash/crc64"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"
	vtar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// PAXXattrPrefix marks extended attributes among PAX records.
const PAXXattrPrefix = "SCHILY.xattr."

// tocType maps a tar type flag to the TOC entry type.
func tocType(flag byte) (string, error) {
	switch flag {
	case tar.TypeReg:
		return TypeReg, nil
	case tar.TypeLink:
		return TypeLink, nil
	case tar.TypeChar:
		return TypeChar, nil
	case tar.TypeBlock:
		return TypeBlock, nil
	case tar.TypeDir:
		return TypeDir, nil
	case tar.TypeFifo:
		return TypeFifo, nil
	case tar.TypeSymlink:
		return TypeSymlink, nil
	}
	return "", fmt.Errorf("tar entry type %q: %w", flag, errdefs.ErrUnsupported)
}

// EntryFromHeader maps a tar header to a TOC entry's metadata fields exactly as the reference
// writer does. Digest, offsets and chunk fields are left empty.
func EntryFromHeader(hdr *tar.Header) (Entry, error) {
	typ, err := tocType(hdr.Typeflag)
	if err != nil {
		return Entry{}, fmt.Errorf("%q: %w", hdr.Name, err)
	}
	var xattrs map[string]string
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, PAXXattrPrefix); ok {
			if xattrs == nil {
				xattrs = map[string]string{}
			}
			xattrs[name] = base64.StdEncoding.EncodeToString([]byte(v))
		}
	}
	return Entry{
		Type:       typ,
		Name:       hdr.Name,
		Linkname:   hdr.Linkname,
		Mode:       hdr.Mode,
		Size:       hdr.Size,
		UID:        hdr.Uid,
		GID:        hdr.Gid,
		ModTime:    timeOrNil(hdr.ModTime),
		AccessTime: timeOrNil(hdr.AccessTime),
		ChangeTime: timeOrNil(hdr.ChangeTime),
		Devmajor:   hdr.Devmajor,
		Devminor:   hdr.Devminor,
		Xattrs:     xattrs,
	}, nil
}

// stdHeader converts a header of the tar-split fork of archive/tar to the standard type.
func stdHeader(h *vtar.Header) *tar.Header {
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

// ChunkEntries returns the TOC entries of a regular file laid out as the reference does: base
// (from EntryFromHeader) with Digest set, then, if the file has more than one chunk, chunk fields
// on base for chunk 0 and one TypeChunk entry per further chunk. frames, if not nil, holds the
// compressed offset of each chunk's zstd frame followed by the file's end offset
// (len(chunks)+1 values); without a blob (e.g. in a store) pass nil and offsets stay zero.
func ChunkEntries(base Entry, fileDigest digest.Digest, chunks []Chunk, frames []int64) []Entry {
	base.Digest = fileDigest.String()
	if frames != nil && len(frames) == len(chunks)+1 && len(chunks) > 0 {
		base.Offset = frames[0]
		base.EndOffset = frames[len(chunks)]
	}
	entries := []Entry{base}
	if len(chunks) < 2 {
		return entries
	}
	for i, c := range chunks {
		if i > 0 {
			entries = append(entries, Entry{Type: TypeChunk, Name: base.Name, ChunkOffset: c.Offset})
		}
		e := &entries[i]
		e.ChunkSize = c.Size
		e.ChunkDigest = c.Digest.String()
		if c.Zeros {
			e.ChunkType = ChunkTypeZeros
		}
		if frames != nil && len(frames) == len(chunks)+1 {
			e.Offset = frames[i]
		}
	}
	return entries
}

// walkTar parses an uncompressed tar stream once and writes its tar-split JSON to tarSplit with
// the same entries, in the same order, as tar-split's asm.NewInputTarStream emits them (which the
// reference uses), without asm's second parse and pipe. For every entry it calls fn with the
// header, the raw bytes preceding the payload (previous padding, extension records, header; only
// valid during the call) and the payload. At the end it calls tail with the raw bytes the tar
// reader consumed after the last payload (padding, end-of-archive blocks) and the trailing bytes
// it did not (rest, which tail must read to EOF).
func walkTar(r io.Reader, tarSplit io.Writer, fn func(hdr *vtar.Header, raw []byte, payload io.Reader) error, tail func(raw []byte, rest io.Reader) error) error {
	packer := storage.NewJSONPacker(tarSplit)
	segment := func(b []byte) error {
		if len(b) == 0 {
			return nil
		}
		if _, err := packer.AddEntry(storage.Entry{Type: storage.SegmentType, Payload: b}); err != nil {
			return fmt.Errorf("recording tar-split: %w: %w", errdefs.ErrInvalid, err)
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
		e := storage.Entry{Type: storage.FileType, Size: hdr.Size}
		if hdr.Size > 0 {
			e.Payload = crc.Sum(nil)
		}
		e.SetName(hdr.Name)
		if _, err := packer.AddEntry(e); err != nil {
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
		return n, invalidf("more than %d bytes after the end of the tar archive", MaxTrailer)
	}
	if n > 0 {
		if serr := s.segment(p[:n]); serr != nil {
			return n, serr
		}
	}
	return n, err
}

// WalkTar reads an uncompressed tar stream to EOF (trailing zero blocks included), writes its
// tar-split JSON stream to tarSplit exactly as the reference writer does (so RebuildTar gives back
// the bit-exact tar) and calls fn for every entry. fn may read the payload of regular files; what
// it leaves is drained.
func WalkTar(r io.Reader, tarSplit io.Writer, fn func(hdr *tar.Header, payload io.Reader) error) error {
	return walkTar(r, tarSplit,
		func(hdr *vtar.Header, _ []byte, payload io.Reader) error { return fn(stdHeader(hdr), payload) },
		func(_ []byte, rest io.Reader) error { _, err := io.Copy(io.Discard, rest); return err })
}

// CRCTable is the CRC-64 table tar-split uses for file payload checksums.
var CRCTable = crc64.MakeTable(crc64.ISO)

// RebuildTar writes the exact tar stream described by a tar-split JSON stream, taking file
// contents from open (called once per regular file with content, with the size tar-split
// records). Each file must deliver exactly that many bytes, else the error wraps
// errdefs.ErrDigestMismatch; each is read to EOF, so a verifying reader can give its verdict.
//
// tar-split's CRC-64 of each file is not checked: every caller hashes the output (the DiffID)
// and takes content from digest-verified sources, which is stronger and leaves the CPU to
// sha256. Files are read ahead on another goroutine into large blocks, so reading and the
// caller's hashing use two cores.
func RebuildTar(tarSplit []byte, open func(name string, size int64) (io.ReadCloser, error), w io.Writer) error {
	entries, err := DecodeTarSplit(tarSplit)
	if err != nil {
		return fmt.Errorf("reading tar-split: %w", err)
	}
	return RebuildTarEntries(entries, open, w)
}

// writeSlice bounds one write of the rebuilt tar: about 20 µs of sha256.
const writeSlice = 32 << 10

// RebuildTarEntries is RebuildTar for a decoded tar-split.
func RebuildTarEntries(entries []storage.Entry, open func(name string, size int64) (io.ReadCloser, error), w io.Writer) error {
	for i := range entries {
		e := &entries[i]
		switch {
		case e.Type != storage.SegmentType && e.Type != storage.FileType:
			return fmt.Errorf("tar-split entry type %d: %w", e.Type, errdefs.ErrInvalid)
		case e.Type == storage.FileType && e.Size < 0:
			return fmt.Errorf("tar-split entry %q has size %d: %w", e.GetName(), e.Size, errdefs.ErrInvalid)
		}
	}
	const blockSize, blocks = 512 << 10, 6
	free := make(chan []byte, blocks)
	for range blocks {
		free <- make([]byte, blockSize)
	}
	full := make(chan []byte, blocks)
	done := make(chan struct{})
	var readErr error
	go func() {
		defer close(full)
		readErr = fillBlocks(entries, open, free, full, done)
	}()
	var writeErr error
	for b := range full {
		// In slices: hashing a block is assembly that cannot be preempted, and a garbage
		// collection waits (spinning, signalling) for this goroutine to stop at each stack scan.
		for p := b; writeErr == nil && len(p) > 0; p = p[min(len(p), writeSlice):] {
			if _, writeErr = w.Write(p[:min(len(p), writeSlice)]); writeErr != nil {
				close(done)
			}
		}
		free <- b[:cap(b)]
	}
	if writeErr != nil {
		return writeErr
	}
	return readErr
}

// fillBlocks lays the tar stream of entries into blocks taken from free and sends each filled
// block to full, until done closes.
func fillBlocks(entries []storage.Entry, open func(string, int64) (io.ReadCloser, error), free <-chan []byte, full chan<- []byte, done <-chan struct{}) error {
	var block []byte
	n := 0
	next := func() bool {
		if block != nil {
			select {
			case full <- block[:n]:
			case <-done:
				return false
			}
		}
		select {
		case block = <-free:
			n = 0
			return true
		case <-done:
			return false
		}
	}
	if !next() {
		return nil
	}
	put := func(p []byte) bool {
		for len(p) > 0 {
			if n == len(block) && !next() {
				return false
			}
			c := copy(block[n:], p)
			n += c
			p = p[c:]
		}
		return true
	}
	var one [1]byte
	for i := range entries {
		e := &entries[i]
		if e.Type == storage.SegmentType {
			if !put(e.Payload) {
				return nil
			}
			continue
		}
		if e.Size == 0 {
			continue
		}
		name := e.GetName()
		rc, err := open(name, e.Size)
		if err != nil {
			return fmt.Errorf("opening %q: %w", name, err)
		}
		for left := e.Size; left > 0; {
			if n == len(block) && !next() {
				rc.Close()
				return nil
			}
			k := int(min(left, int64(len(block)-n)))
			got, err := io.ReadFull(rc, block[n:n+k])
			n += got
			left -= int64(got)
			if err == io.EOF || err == io.ErrUnexpectedEOF {
				rc.Close()
				return fmt.Errorf("%q: tar-split says %d bytes, got %d: %w", name, e.Size, e.Size-left, errdefs.ErrDigestMismatch)
			}
			if err != nil {
				rc.Close()
				return fmt.Errorf("reading %q: %w", name, err)
			}
		}
		// Reading to EOF also collects a verifying reader's verdict.
		extra, err := io.ReadFull(rc, one[:])
		rc.Close()
		if extra > 0 {
			return fmt.Errorf("%q: longer than the %d bytes tar-split records: %w", name, e.Size, errdefs.ErrDigestMismatch)
		} else if err != io.EOF {
			return fmt.Errorf("reading %q: %w", name, err)
		}
	}
	if n > 0 {
		select {
		case full <- block[:n]:
		case <-done:
		}
	}
	return nil
}
