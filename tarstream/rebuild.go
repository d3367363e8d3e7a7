package tarstream

import (
	"fmt"
	"io"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// Rebuild writes the exact tar stream described by a tar-split JSON stream (of at most
// MaxTarSplitLines lines), taking file
// contents from open (called once per regular file with content, with the size tar-split
// records). Each file must deliver exactly that many bytes, else the error wraps
// errdefs.ErrDigestMismatch; each is read to EOF, so a verifying reader can give its verdict.
//
// tar-split's CRC-64 of each file is not checked: every caller hashes the output (the DiffID)
// and takes content from digest-verified sources, which is stronger and leaves the CPU to
// sha256. Files are read ahead on another goroutine into large blocks, so reading and the
// caller's hashing use two cores.
func Rebuild(tarSplit []byte, open func(name string, size int64) (io.ReadCloser, error), w io.Writer) error {
	entries, err := DecodeTarSplit(tarSplit, MaxTarSplitLines)
	if err != nil {
		return fmt.Errorf("reading tar-split: %w", err)
	}
	return RebuildEntries(entries, open, w)
}

// writeSlice bounds one write of the rebuilt tar: about 20 µs of sha256.
const writeSlice = 32 << 10

// RebuildEntries is Rebuild for a decoded tar-split.
func RebuildEntries(entries []storage.Entry, open func(name string, size int64) (io.ReadCloser, error), w io.Writer) error {
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
