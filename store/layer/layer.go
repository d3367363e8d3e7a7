// Package layer moves tar layers into and out of the store: Import splits a layer (tar, tar+gzip,
// tar+zstd, zstd:chunked read as a plain stream) into one object per distinct file content plus a
// TOC and tar-split; Export rebuilds the bit-exact tar, whose sha256 is the DiffID.
package layer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/iocount"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarstream"
)

// Bounds on hostile input.
const (
	maxNameLen = 4096 // PATH_MAX
	// maxEntries is the reader's cap, so that every stored TOC can be read back; chunk entries
	// count.
	maxEntries = chunked.MaxTOCEntries
)

// DiffIDMismatchError is a layer whose tar does not hash to the DiffID its image's config lists.
// It is an errdefs.ErrDigestMismatch; its own type lets a caller tell it from a wrong blob
// digest and explain it.
type DiffIDMismatchError struct {
	Got, Want digest.Digest
}

func (e *DiffIDMismatchError) Error() string {
	return fmt.Sprintf("tar hashes to %s, expected DiffID %s: %v", e.Got, e.Want, errdefs.ErrDigestMismatch)
}

func (e *DiffIDMismatchError) Unwrap() error { return errdefs.ErrDigestMismatch }

// Options for Import.
type Options struct {
	// DiffID, if set, is what the layer's tar must hash to; a mismatch stores nothing.
	DiffID digest.Digest
	// Refill imports a layer that is recorded already (its objects are stored again where
	// missing; the record stays): how fsck --repair restores a damaged layer. Needs DiffID.
	Refill bool
}

// Imported is a stored layer and what importing it wrote.
type Imported struct {
	store.Layer
	// ObjectsWritten counts the distinct file contents the store did not have.
	ObjectsWritten int
}

// Import reads one layer from r and stores it: objects first (in one batch), then the layer
// metadata. It returns the stored layer. The caller holds the store's shared lock (and keeps
// holding it until the image that uses the layer is recorded).
func Import(ctx context.Context, s *store.Store, r io.Reader, opts Options) (Imported, error) {
	if opts.Refill && opts.DiffID == "" {
		return Imported{}, fmt.Errorf("layer: a refill needs the expected DiffID: %w", errdefs.ErrInvalid)
	}
	if opts.DiffID != "" && !opts.Refill && s.HasLayer(opts.DiffID) {
		l, err := s.Layer(ctx, opts.DiffID)
		return Imported{Layer: l}, err
	}
	plain, err := tarstream.Decompress(r)
	if err != nil {
		return Imported{}, fmt.Errorf("layer: %w", err)
	}
	defer plain.Close()

	batch := s.NewBatch()
	committed := false
	defer func() {
		if !committed {
			batch.Abort()
		}
	}()
	diff := sha256.New()
	counted := &iocount.Reader{R: io.TeeReader(plain, diff)}
	var tarSplit bytes.Buffer
	w := &importWalk{ctx: ctx, batch: batch, seen: map[string]bool{}}
	err = tarstream.Walk(counted, &tarSplit, w.entry)
	if err != nil {
		return Imported{}, classify(err)
	}
	// The DiffID covers every byte of the tar stream, including anything after the archive end.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return Imported{}, classify(err)
	}
	// A lenient tar reader accepts some truncated archives (e.g. missing padding) whose tar-split
	// then cannot rebuild every byte; such a layer could never be exported, so refuse it.
	if n, err := tarSplitLength(tarSplit.Bytes()); err != nil || n != counted.N {
		return Imported{}, fmt.Errorf("layer: tar stream of %d bytes, tar-split accounts for %d (%v): truncated or malformed: %w", counted.N, n, err, errdefs.ErrInvalid)
	}
	diffID := digest.NewDigest(digest.SHA256, diff)
	if opts.DiffID != "" && diffID != opts.DiffID {
		return Imported{}, fmt.Errorf("layer: %w", &DiffIDMismatchError{Got: diffID, Want: opts.DiffID})
	}
	written := batch.Len()
	if err := batch.Commit(ctx); err != nil {
		return Imported{}, fmt.Errorf("layer %s: %w", diffID, err)
	}
	committed = true
	l := store.Layer{DiffID: diffID, TarSize: counted.N, ContentSize: w.content}
	if err := batch.PutLayer(ctx, l, w.entries, tarSplit.Bytes()); err != nil {
		if errors.Is(err, layername.ErrTOCInexact) {
			// Not a reason to pull whole (this is the whole layer): the store cannot record it.
			return Imported{}, fmt.Errorf("layer: %v: %w", err, errdefs.ErrUnsupported)
		}
		return Imported{}, err
	}
	stored, err := s.Layer(ctx, diffID)
	return Imported{Layer: stored, ObjectsWritten: written}, err
}

// importWalk builds a layer's model as its tar is walked, storing each regular file's content
// in the batch; the TOC is derived from the model afterwards.
type importWalk struct {
	ctx     context.Context
	batch   *store.Batch
	entries []layerfs.Entry
	rows    int // the TOC rows entries make (chunk rows count against maxEntries)
	content int64
	seen    map[string]bool
}

// entry takes one tar entry: it checks the header, then records the entry (and stores the
// content of a regular file).
func (w *importWalk) entry(hdr *tar.Header, payload io.Reader) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	if w.rows >= maxEntries {
		return fmt.Errorf("over %d entries: %w", maxEntries, errdefs.ErrInvalid)
	}
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		// A pax global header (git archive writes one, holding a comment) is no entry.
		// Like Go's and tar-split's readers, Kura does not apply its records to the
		// entries that follow, so every path reads the same names. The tar-split keeps
		// its bytes, so the DiffID is rebuilt exactly.
		return nil
	}
	if err := w.checkHeader(hdr); err != nil {
		return err
	}
	e, err := chunked.HeaderEntry(hdr)
	if err != nil {
		return fmt.Errorf("entry %q: %v: %w", hdr.Name, err, errdefs.ErrInvalid)
	}
	if e.Type != layerfs.TypeReg || hdr.Size == 0 {
		w.entries = append(w.entries, e)
		w.rows++
		return nil
	}
	if hdr.Size < 0 {
		return fmt.Errorf("entry %q: size %d: %w", hdr.Name, hdr.Size, errdefs.ErrInvalid)
	}
	if err := storeFile(w.ctx, w.batch, &e, payload); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	w.entries = append(w.entries, e)
	w.rows += max(len(e.Chunks), 1) // one row per chunk when there are several
	if w.rows > maxEntries {
		return fmt.Errorf("over %d entries: %w", maxEntries, errdefs.ErrInvalid)
	}
	w.content += hdr.Size
	return nil
}

// checkHeader refuses hostile names, duplicates and bad link targets.
func (w *importWalk) checkHeader(hdr *tar.Header) error {
	name, err := layername.Parse(hdr.Name)
	if err != nil {
		return err
	}
	if w.seen[name.Path] {
		return fmt.Errorf("entry %q appears twice: %w", hdr.Name, errdefs.ErrInvalid)
	}
	w.seen[name.Path] = true
	if hdr.Typeflag == tar.TypeLink || hdr.Typeflag == tar.TypeSymlink {
		if len(hdr.Linkname) > maxNameLen || hdr.Linkname == "" {
			return fmt.Errorf("entry %q: link target empty or over %d bytes: %w", hdr.Name, maxNameLen, errdefs.ErrInvalid)
		}
	}
	if hdr.Typeflag == tar.TypeLink {
		if _, err := layername.Link(hdr.Linkname); err != nil {
			return fmt.Errorf("hardlink %q: %w", hdr.Name, err)
		}
		// A target in a lower layer is legal; checkout refuses targets missing from the tree.
	}
	return nil
}

// storeFile writes the payload of e, a regular file, as an object while cutting it into the
// same rollsum chunks as a zstd:chunked writer, and sets e's digest and chunks. A file of one
// chunk gets the chunk its TOC row gives back (the whole file, not zeros), so that the entry is
// what decoding the stored TOC yields.
func storeFile(ctx context.Context, b *store.Batch, e *layerfs.Entry, payload io.Reader) error {
	w, err := b.Ingest(ctx, "", e.Size)
	if err != nil {
		return err
	}
	var chunks []layerfs.Chunk
	cw := chunked.NewChunkWriter(w, func(c chunked.Chunk) error {
		chunks = append(chunks, c)
		return nil
	})
	n, err := io.Copy(cw, payload)
	if err == nil {
		err = cw.Close()
	}
	if err == nil && n != e.Size {
		err = fmt.Errorf("declares %d bytes but holds %d: %w", e.Size, n, errdefs.ErrInvalid)
	}
	if err != nil {
		w.Abort()
		return err
	}
	if e.Digest, err = w.Commit(ctx); err != nil {
		return err
	}
	if len(chunks) < 2 {
		chunks = append(chunks[:0], layerfs.Chunk{Size: e.Size, Digest: e.Digest})
	}
	e.Chunks = slices.Clip(chunks)
	return nil
}

// classify marks truncated or malformed tar streams as invalid input.
func classify(err error) error {
	if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, tar.ErrHeader) || errors.Is(err, tar.ErrFieldTooLong) {
		return fmt.Errorf("layer: %v: %w", err, errdefs.ErrInvalid)
	}
	return fmt.Errorf("layer: %w", err)
}

// tarSplitLength is the number of tar bytes a tar-split stream rebuilds: raw segments plus file
// payloads.
func tarSplitLength(ts []byte) (int64, error) {
	var n int64
	dec := json.NewDecoder(bytes.NewReader(ts))
	for {
		var e struct {
			Type    int    `json:"type"`
			Size    int64  `json:"size"`
			Payload []byte `json:"payload"`
		}
		if err := dec.Decode(&e); err == io.EOF {
			return n, nil
		} else if err != nil {
			return n, err
		}
		switch e.Type {
		case 1:
			n += e.Size
		case 2:
			n += int64(len(e.Payload))
		}
	}
}

// Export writes the layer's exact tar stream to w, rebuilt from its tar-split and objects, and
// checks that it hashes to the DiffID.
func Export(ctx context.Context, s ExportSource, diffID digest.Digest, w io.Writer) error {
	toc, err := s.LayerTOC(ctx, diffID)
	if err != nil {
		return err
	}
	ts, err := s.LayerTarSplit(ctx, diffID)
	if err != nil {
		return err
	}
	byName := map[string]digest.Digest{}
	for _, e := range toc.Entries {
		if e.Type == chunked.TypeReg && e.Size > 0 {
			d, err := digest.Parse(e.Digest)
			if err != nil {
				return fmt.Errorf("layer %s: entry %q: %v: %w", diffID, e.Name, err, errdefs.ErrInvalid)
			}
			byName[e.Name] = d
		}
	}
	h := sha256.New()
	err = tarstream.Rebuild(ts, func(name string, size int64) (io.ReadCloser, error) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		d, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("file %q is in the tar-split but not the TOC: %w", name, errdefs.ErrInvalid)
		}
		return s.Open(ctx, d)
	}, io.MultiWriter(w, h))
	if err != nil {
		return fmt.Errorf("exporting layer %s: %w", diffID, err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return fmt.Errorf("exporting layer %s: rebuilt tar hashes to %s: %w", diffID, got, errdefs.ErrDigestMismatch)
	}
	return nil
}
