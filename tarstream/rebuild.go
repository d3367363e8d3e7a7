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
	f := &filler{free: free, full: full, done: done}
	if !f.next() {
		return nil
	}
	for i := range entries {
		e := &entries[i]
		if e.Type == storage.SegmentType {
			if !f.put(e.Payload) {
				return nil
			}
			continue
		}
		if e.Size == 0 {
			continue
		}
		if stop, err := f.file(e.GetName(), e.Size, open); stop || err != nil {
			return err
		}
	}
	if f.n > 0 {
		select {
		case full <- f.block[:f.n]:
		case <-done:
		}
	}
	return nil
}

// filler fills blocks, n bytes of block so far.
type filler struct {
	free  <-chan []byte
	full  chan<- []byte
	done  <-chan struct{}
	block []byte
	n     int
}

// next sends the current block, if any, and takes a free one; false once done closed.
func (f *filler) next() bool {
	if f.block != nil {
		select {
		case f.full <- f.block[:f.n]:
		case <-f.done:
			return false
		}
	}
	select {
	case f.block = <-f.free:
		f.n = 0
		return true
	case <-f.done:
		return false
	}
}

// put copies p into blocks; false once done closed.
func (f *filler) put(p []byte) bool {
	for len(p) > 0 {
		if f.n == len(f.block) && !f.next() {
			return false
		}
		c := copy(f.block[f.n:], p)
		f.n += c
		p = p[c:]
	}
	return true
}

// file reads the size bytes of the named file into blocks; stop says done closed.
func (f *filler) file(name string, size int64, open func(string, int64) (io.ReadCloser, error)) (stop bool, err error) {
	rc, err := open(name, size)
	if err != nil {
		return false, fmt.Errorf("opening %q: %w", name, err)
	}
	defer rc.Close()
	for left := size; left > 0; {
		if f.n == len(f.block) && !f.next() {
			return true, nil
		}
		k := int(min(left, int64(len(f.block)-f.n)))
		got, err := io.ReadFull(rc, f.block[f.n:f.n+k])
		f.n += got
		left -= int64(got)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return false, fmt.Errorf("%q: tar-split says %d bytes, got %d: %w", name, size, size-left, errdefs.ErrDigestMismatch)
		}
		if err != nil {
			return false, fmt.Errorf("reading %q: %w", name, err)
		}
	}
	// Reading to EOF also collects a verifying reader's verdict.
	var one [1]byte
	extra, err := io.ReadFull(rc, one[:])
	if extra > 0 {
		return false, fmt.Errorf("%q: longer than the %d bytes tar-split records: %w", name, size, errdefs.ErrDigestMismatch)
	} else if err != io.EOF {
		return false, fmt.Errorf("reading %q: %w", name, err)
	}
	return false, nil
}
