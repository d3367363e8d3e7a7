package chunked

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	vtar "github.com/vbatts/tar-split/archive/tar"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/layername"
	"github.com/kura-oci/kura/source"
	"github.com/kura-oci/kura/tarstream"
)

// ReadOption configures Locate* and Parse.
type ReadOption func(*readOptions)

type readOptions struct {
	maxMetadata int64
}

// defaultReadOptions holds every reader default.
func defaultReadOptions() readOptions {
	return readOptions{
		maxMetadata: 150 << 20, // the reference's bound for TOC and tar-split, compressed or not
	}
}

// WithMaxMetadataSize bounds the TOC and the tar-split, each compressed and uncompressed.
func WithMaxMetadataSize(n int64) ReadOption { return func(o *readOptions) { o.maxMetadata = n } }

func readOpts(opts []ReadOption) readOptions {
	o := defaultReadOptions()
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// Location says where a layer's metadata lies in its blob. A registry puller fetches TOC and
// TarSplit (adjacent in blobs we and the reference write) in one ranged request, then calls Parse.
type Location struct {
	TOC             source.Range
	TOCUncompressed int64
	// TOCDigest is the annotation's digest of the compressed TOC. It is empty when the location
	// came from the footer, which authenticates nothing; Parse then trusts the bytes as given.
	TOCDigest digest.Digest
	// TarSplit is zero when the layer has none (old format).
	TarSplit             source.Range
	TarSplitUncompressed int64
}

// Ranges returns the ranges to fetch: TOC, then tar-split if any.
func (l Location) Ranges() []source.Range {
	if l.TarSplit.Length == 0 {
		return []source.Range{l.TOC}
	}
	return []source.Range{l.TOC, l.TarSplit}
}

// IsChunked reports whether the annotations mark a zstd:chunked layer (current or old names).
func IsChunked(ann map[string]string) bool {
	_, cur := ann[AnnotationTOCDigest]
	_, old := ann[AnnotationOldTOCDigest]
	return cur || old
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalid}, args...)...)
}

// ErrNeedFooter: the annotations carry a TOC digest but no position (allowed for the old
// format). Locate by the footer, then set Location.TOCDigest from TOCDigest(annotations).
var ErrNeedFooter = fmt.Errorf("no TOC position annotation, the footer must locate the TOC: %w", errdefs.ErrNotFound)

// TOCDigest returns the TOC digest annotation (current name, else old).
func TOCDigest(ann map[string]string) (digest.Digest, error) {
	key := AnnotationTOCDigest
	if _, ok := ann[key]; !ok {
		key = AnnotationOldTOCDigest
	}
	ds, ok := ann[key]
	if !ok {
		return "", fmt.Errorf("no zstd:chunked annotations: %w", errdefs.ErrNotFound)
	}
	d, err := digest.Parse(ds)
	if err != nil || d.Algorithm() != digest.SHA256 {
		return "", invalidf("annotation %s: %q is not a sha256 digest", key, ds)
	}
	return d, nil
}

// LocateFromAnnotations finds TOC and tar-split from a layer descriptor's annotations (current
// names first, then the old io.containers.* ones). It fails with ErrNotFound if the layer is not
// zstd:chunked and ErrInvalid if the annotations are malformed or point outside the blob.
func LocateFromAnnotations(ann map[string]string, blobSize int64, opts ...ReadOption) (Location, error) {
	o := readOpts(opts)
	if _, ok := ann[AnnotationEstargzTOC]; ok && IsChunked(ann) {
		return Location{}, invalidf("layer carries both eStargz and zstd:chunked annotations")
	}
	digestKey, posKey := AnnotationTOCDigest, AnnotationTOCPosition
	if _, ok := ann[digestKey]; !ok {
		digestKey, posKey = AnnotationOldTOCDigest, AnnotationOldTOCPosition
	}
	ds, ok := ann[digestKey]
	if !ok {
		return Location{}, fmt.Errorf("no zstd:chunked annotations: %w", errdefs.ErrNotFound)
	}
	d, err := digest.Parse(ds)
	if err != nil || d.Algorithm() != digest.SHA256 {
		return Location{}, invalidf("annotation %s: %q is not a sha256 digest", digestKey, ds)
	}
	pos, ok := ann[posKey]
	if !ok {
		return Location{}, fmt.Errorf("annotation %s: %w", posKey, ErrNeedFooter)
	}
	v, err := parseNumbers(pos, 4)
	if err != nil {
		return Location{}, invalidf("annotation %s=%q: %v", posKey, pos, err)
	}
	if v[3] != manifestTypeCRFS {
		return Location{}, fmt.Errorf("annotation %s: manifest type %d: %w", posKey, v[3], errdefs.ErrUnsupported)
	}
	loc := Location{TOC: source.Range{Offset: v[0], Length: v[1]}, TOCUncompressed: v[2], TOCDigest: d}
	if digestKey == AnnotationTOCDigest {
		if tsp, ok := ann[AnnotationTarSplitPosition]; ok {
			v, err := parseNumbers(tsp, 3)
			if err != nil {
				return Location{}, invalidf("annotation %s=%q: %v", AnnotationTarSplitPosition, tsp, err)
			}
			loc.TarSplit, loc.TarSplitUncompressed = source.Range{Offset: v[0], Length: v[1]}, v[2]
		}
	}
	return loc, loc.check(blobSize, o)
}

func parseNumbers(s string, n int) ([]int64, error) {
	parts := strings.Split(s, ":")
	if len(parts) != n {
		return nil, fmt.Errorf("want %d numbers separated by ':'", n)
	}
	v := make([]int64, n)
	for i, p := range parts {
		x, err := strconv.ParseInt(p, 10, 64)
		if err != nil || x < 0 {
			return nil, fmt.Errorf("%q is not a non-negative integer", p)
		}
		v[i] = x
	}
	return v, nil
}

// check bounds the location by the blob and the size limit.
// ErrMetadataTooLarge: a layer's TOC or tar-split is over the size bound. The layer may be
// honest (very many files); a puller then reads it whole instead, as the reference does.
var ErrMetadataTooLarge = errors.New("layer metadata over the size bound")

func (l Location) check(blobSize int64, o readOptions) error {
	rs := []struct {
		name         string
		r            source.Range
		uncompressed int64
	}{{"TOC", l.TOC, l.TOCUncompressed}, {"tar-split", l.TarSplit, l.TarSplitUncompressed}}
	for i, x := range rs {
		if i == 1 && x.r.Length == 0 && x.uncompressed == 0 && x.r.Offset == 0 {
			continue // no tar-split
		}
		if x.r.Length <= 0 || x.uncompressed <= 0 {
			return invalidf("%s has length %d, uncompressed %d", x.name, x.r.Length, x.uncompressed)
		}
		if x.r.Length > o.maxMetadata || x.uncompressed > o.maxMetadata {
			return fmt.Errorf("%s of %d bytes (%d uncompressed) exceeds the %d-byte limit: %w: %w",
				x.name, x.r.Length, x.uncompressed, o.maxMetadata, ErrMetadataTooLarge, errdefs.ErrInvalid)
		}
		if x.r.Offset < skippableHeaderSize || x.r.Offset > blobSize || x.r.Length > blobSize-x.r.Offset {
			return invalidf("%s range %d+%d lies outside the %d-byte blob", x.name, x.r.Offset, x.r.Length, blobSize)
		}
	}
	return nil
}

// LocateFromFooter finds TOC and tar-split from the last bytes of a blob (FooterFetchSize of
// them, fewer if the blob is shorter), in the 64-byte or old 40-byte footer form. The footer is
// not authenticated: TOCDigest stays empty.
func LocateFromFooter(tail []byte, blobSize int64, opts ...ReadOption) (Location, error) {
	o := readOpts(opts)
	f, _, err := parseFooter(tail)
	if err != nil {
		return Location{}, err
	}
	const maxInt = 1<<63 - 1
	for _, v := range []uint64{f.tocOffset, f.tocLen, f.tocUncompressed, f.tarSplitOffset, f.tarSplitLen, f.tarSplitUncompressed} {
		if v > maxInt {
			return Location{}, invalidf("footer value %d out of range", v)
		}
	}
	loc := Location{
		TOC: source.Range{Offset: int64(f.tocOffset), Length: int64(f.tocLen)}, TOCUncompressed: int64(f.tocUncompressed),
		TarSplit: source.Range{Offset: int64(f.tarSplitOffset), Length: int64(f.tarSplitLen)}, TarSplitUncompressed: int64(f.tarSplitUncompressed),
	}
	return loc, loc.check(blobSize, o)
}

// Layer is a parsed and validated zstd:chunked layer: its TOC and (if any) tar-split, checked
// against each other and against the blob bounds.
type Layer struct {
	// TOC is the wire form, kept to be recorded as it came (a store's layer record); work on
	// Entries.
	TOC       *TOC
	TOCDigest digest.Digest // of the compressed TOC; empty when located by footer
	// TarSplit is the uncompressed tar-split JSON; nil for the old format, whose DiffID cannot be
	// verified after a partial pull.
	TarSplit []byte
	// TarSplitEntries is TarSplit decoded.
	TarSplitEntries []storage.Entry
	// Entries are the layer's entries, decoded from the TOC once (package layerfs): what
	// everything but fetching works on.
	Entries []layerfs.Entry
	// Files are the regular files with content, in TOC order, with their frames in the blob.
	Files []File
	// DataEnd is where the zstd frames of the tar stream end (the TOC's skippable frame starts).
	DataEnd int64
}

// File is where a regular file with content lies in the blob: its entry in Layer.Entries (the
// model, which knows no blob) and the wire positions a puller fetches, kept beside it.
type File struct {
	Entry *layerfs.Entry // in Layer.Entries
	// Range is the file's compressed frames [Offset, EndOffset).
	Range source.Range
	// Frames[i] are the compressed frames of Entry.Chunks[i] (Range itself for a single chunk).
	Frames []source.Range
}

// FileChunk is one chunk of a file with its frames: what a puller fetches and decodes.
type FileChunk struct {
	layerfs.Chunk
	Range source.Range // compressed frames
}

// Chunk returns the i-th chunk of f with its frames.
func (f *File) Chunk(i int) FileChunk {
	return FileChunk{Chunk: f.Entry.Chunks[i], Range: f.Frames[i]}
}

// Parse validates and decodes a layer's metadata: tocBlob and tarSplitBlob are the bytes of
// loc.TOC and loc.TarSplit (tarSplitBlob nil if loc has none). It enforces the containers/storage
// security rules: TOC digest equals the annotation, tar-split digest equals the TOC's
// tarSplitDigest, and TOC and tar-split describe the same entries; plus entry names without
// traversal, no duplicates, frames inside the data and in order, and chunks tiling each file.
func Parse(loc Location, tocBlob, tarSplitBlob []byte, opts ...ReadOption) (*Layer, error) {
	l, check, err := ParseDeferred(loc, tocBlob, tarSplitBlob, opts...)
	if err != nil {
		return nil, err
	}
	if err := check(); err != nil {
		return nil, err
	}
	return l, nil
}

// ParseDeferred is Parse without its last step, the entry-by-entry comparison of TOC and
// tar-split, which it returns as check for the caller to run when it suits (a puller runs it
// beside fetching). Until check returns nil the tar-split is authenticated but may disagree
// with the TOC: nothing built from the layer may be recorded before.
func ParseDeferred(loc Location, tocBlob, tarSplitBlob []byte, opts ...ReadOption) (l *Layer, check func() error, err error) {
	l, err = parse(loc, tocBlob, tarSplitBlob, false, loc.carrier(), opts...)
	if err != nil {
		return nil, nil, err
	}
	if l.TarSplitEntries == nil {
		return l, func() error { return nil }, nil
	}
	return l, func() error { return CheckTarSplitEntries(l.Entries, l.TarSplitEntries) }, nil
}

// ParseTOCOnly is Parse for a puller that obtains the tar-split otherwise (predicts it from a
// stored layer, see package tarsplit): it checks and decodes the TOC alone. The Layer has no
// tar-split; before anything built from it is trusted, a tar-split must be supplied and pass
// CheckTarSplitEntries, and the tar rebuilt with it must hash to the DiffID.
func ParseTOCOnly(loc Location, tocBlob []byte, opts ...ReadOption) (*Layer, error) {
	carrier := loc.carrier() // the tar-split's bytes still carry entries
	loc.TarSplit, loc.TarSplitUncompressed = source.Range{}, 0
	return parse(loc, tocBlob, nil, true, carrier, opts...)
}

// carrier is how many blob bytes carry the layer's entries: everything before the footer.
func (l Location) carrier() int64 { return max(l.TOC.End(), l.TarSplit.End()) }

// parse checks and decodes; carrier (Location.carrier) bounds the TOC's entries.
func parse(loc Location, tocBlob, tarSplitBlob []byte, tocOnly bool, carrier int64, opts ...ReadOption) (*Layer, error) {
	o := readOpts(opts)
	if int64(len(tocBlob)) != loc.TOC.Length {
		return nil, invalidf("TOC is %d bytes, location says %d", len(tocBlob), loc.TOC.Length)
	}
	if loc.TarSplit.Length > 0 && loc.TarSplit.Offset < loc.TOC.End() && loc.TarSplit.End() > loc.TOC.Offset-skippableHeaderSize {
		return nil, invalidf("tar-split range overlaps the TOC")
	}
	// The tar-split is hashed, decompressed and decoded on another core while the TOC is; what
	// it yields is used only once the TOC has vouched for its digest.
	var ts tarSplitResult
	tsDone := make(chan struct{})
	if loc.TarSplit.Length > 0 && tarSplitBlob != nil {
		go func() {
			defer close(tsDone)
			ts = decodeTarSplitBlob(tarSplitBlob, loc.TarSplitUncompressed, o.maxMetadata, TarSplitLineLimit(int64(len(tarSplitBlob))))
		}()
	} else {
		close(tsDone)
	}
	defer func() { <-tsDone }()

	if loc.TOCDigest != "" {
		if got := digest.FromBytes(tocBlob); got != loc.TOCDigest {
			return nil, fmt.Errorf("TOC digest %s, annotation says %s: %w", got, loc.TOCDigest, errdefs.ErrDigestMismatch)
		}
	}
	tocJSON, err := decompressBounded(tocBlob, loc.TOCUncompressed, o.maxMetadata)
	if err != nil {
		return nil, fmt.Errorf("TOC: %w", err)
	}
	toc, err := parseTOC(tocJSON, TOCEntryLimit(carrier))
	if err != nil {
		return nil, err
	}
	layer := &Layer{TOC: toc, TOCDigest: loc.TOCDigest, DataEnd: loc.TOC.Offset - skippableHeaderSize}
	if err := layer.index(); err != nil {
		return nil, err
	}
	if toc.TarSplitDigest == "" || tocOnly {
		return layer, nil // old format (no tar-split), or the caller brings its own
	}
	want, err := digest.Parse(toc.TarSplitDigest)
	if err != nil {
		return nil, invalidf("TOC tarSplitDigest %q: %v", toc.TarSplitDigest, err)
	}
	if loc.TarSplit.Length == 0 || tarSplitBlob == nil {
		return nil, invalidf("TOC names a tar-split but the layer does not locate one")
	}
	if int64(len(tarSplitBlob)) != loc.TarSplit.Length {
		return nil, invalidf("tar-split is %d bytes, location says %d", len(tarSplitBlob), loc.TarSplit.Length)
	}
	<-tsDone
	got := ts.sha256
	if want.Algorithm() != digest.SHA256 {
		got = want.Algorithm().FromBytes(tarSplitBlob)
	}
	if got != want {
		return nil, fmt.Errorf("tar-split digest %s, TOC says %s: %w", got, want, errdefs.ErrDigestMismatch)
	}
	if ts.err != nil {
		return nil, ts.err
	}
	if ts.entries == nil {
		ts.entries = []storage.Entry{} // an empty tar-split still has to be checked
	}
	layer.TarSplit, layer.TarSplitEntries = ts.json, ts.entries
	return layer, nil
}

type tarSplitResult struct {
	sha256  digest.Digest
	json    []byte
	entries []storage.Entry
	err     error
}

func decodeTarSplitBlob(blob []byte, size, limit int64, maxLines int) (r tarSplitResult) {
	r.sha256 = digest.FromBytes(blob)
	if r.json, r.err = decompressLines(blob, size, limit, maxLines); r.err != nil {
		r.err = fmt.Errorf("tar-split: %w", r.err)
		return r
	}
	if r.entries, r.err = tarstream.DecodeTarSplit(r.json, maxLines); r.err != nil {
		r.err = fmt.Errorf("tar-split: %w", r.err)
	}
	return r
}

// maxWindow bounds the decoder's memory; writers of this format use 8 MiB windows. Output is
// bounded separately by the expected size, so a zstd bomb stops at size+1 bytes.
const maxWindow = 64 << 20

// decompressBounded decompresses a metadata blob that must be exactly size bytes (≤ limit).
func decompressBounded(blob []byte, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, invalidf("%d uncompressed bytes exceed the %d-byte limit", size, limit)
	}
	// One call into a buffer of the announced size: no growth, no copies. The decoder refuses to
	// produce more than the larger of size+1 bytes and one window, so a lying size cannot become a
	// bomb (the window bound also applies to the window a frame asks for).
	d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow),
		zstd.WithDecoderMaxMemory(max(uint64(size)+1, maxWindow)))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	out, err := d.DecodeAll(blob, make([]byte, 0, size))
	if err != nil {
		return nil, invalidf("decompressing: %v", err)
	}
	if int64(len(out)) != size {
		return nil, invalidf("decompressed to %d bytes, expected %d", len(out), size)
	}
	return out, nil
}

// decompressLines is decompressBounded for the line-oriented tar-split: it streams, counting
// lines as they come out, and stops past maxLines. The buffer grows with what is decompressed,
// doubling up to the declared size, so a stream of blank lines is refused having cost what the
// line limit allows, not what the declaration says. (A buffer of the declared size made at once
// was touched whole whenever the runtime handed out reused memory, which it zeroes: 128 MiB
// resident for a 14 KB bomb, now and then.)
func decompressLines(blob []byte, size, limit int64, maxLines int) ([]byte, error) {
	if size > limit {
		return nil, invalidf("%d uncompressed bytes exceed the %d-byte limit", size, limit)
	}
	d, err := zstd.NewReader(bytes.NewReader(blob), zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow),
		zstd.WithDecoderMaxMemory(max(uint64(size)+1, maxWindow)))
	if err != nil {
		return nil, err
	}
	defer d.Close()
	want := int(size) + 1 // one byte more: a stream longer than declared is found
	out := make([]byte, min(want, lineBufferStart))
	n, lines := 0, 0
	for n < want {
		if n == len(out) {
			out = append(out, make([]byte, min(len(out), want-len(out)))...)
		}
		k, err := d.Read(out[n:])
		lines += bytes.Count(out[n:n+k], []byte{'\n'})
		n += k
		if lines > maxLines {
			return nil, errTooManyEntries("tar-split", maxLines)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, invalidf("decompressing: %v", err)
		}
	}
	if int64(n) != size {
		return nil, invalidf("decompressed to %d bytes or more, expected %d", n, size)
	}
	return out[:n:n], nil
}

// lineBufferStart is the first buffer decompressLines decompresses into.
const lineBufferStart = 1 << 20

// ParseTOC decodes TOC JSON like the reference: keys match case-insensitively, unknown keys are
// skipped, trailing data is an error. It checks the structure (see Parse) but no offsets.
// At most MaxTOCEntries entries are decoded.
func ParseTOC(b []byte) (*TOC, error) { return parseTOC(b, MaxTOCEntries) }

// parseTOC is ParseTOC refusing, while it decodes, more than maxEntries entries.
func parseTOC(b []byte, maxEntries int) (*TOC, error) {
	toc, ok, over := decodeTOCFastLimit(b, maxEntries)
	if over {
		return nil, errTooManyEntries("TOC", maxEntries)
	}
	if !ok {
		// The same struct with an entries list that counts as it decodes: keys still match
		// as encoding/json matches them.
		var lt struct {
			Version        int            `json:"version"`
			Entries        limitedEntries `json:"entries"`
			TarSplitDigest string         `json:"tarSplitDigest,omitempty"`
		}
		lt.Entries.max = maxEntries
		// Unmarshal, not a Decoder: it reads b in place (a Decoder copies it into a buffer),
		// and refuses trailing data too.
		if err := json.Unmarshal(b, &lt); err != nil {
			if lt.Entries.over {
				return nil, errTooManyEntries("TOC", maxEntries)
			}
			return nil, invalidf("decoding TOC: %v", err)
		}
		toc = &TOC{Version: lt.Version, Entries: lt.Entries.e, TarSplitDigest: lt.TarSplitDigest}
	}
	if toc.Version != 1 {
		return nil, fmt.Errorf("TOC version %d: %w", toc.Version, errdefs.ErrUnsupported)
	}
	if !ok { // only encoding/json knows the fields of names that are not UTF-8
		for i := range toc.Entries {
			if err := toc.Entries[i].restoreRaw(); err != nil {
				return nil, err
			}
		}
	}
	return toc, nil
}

// limitedEntries decodes a JSON array of entries one at a time, refusing more than max.
type limitedEntries struct {
	max  int
	e    []Entry
	over bool
}

func (l *limitedEntries) UnmarshalJSON(b []byte) error {
	l.e = nil
	if string(b) == "null" {
		return nil
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if t, err := dec.Token(); err != nil || t != json.Delim('[') {
		return fmt.Errorf("entries: not an array")
	}
	l.e = []Entry{}
	for dec.More() {
		if len(l.e) >= l.max {
			l.over = true
			return errTooManyEntries("TOC", l.max)
		}
		l.e = append(l.e, Entry{})
		if err := dec.Decode(&l.e[len(l.e)-1]); err != nil {
			return err
		}
	}
	return nil
}

// index validates the TOC, decodes it into Entries and locates the frames of Files.
func (l *Layer) index() error {
	entries, err := DecodeEntries(l.TOC)
	if err != nil {
		return err
	}
	l.Entries = entries
	rows := l.TOC.Entries
	nFiles, nFrames := 0, 0
	for i := range entries {
		if entries[i].HasContent() {
			nFiles, nFrames = nFiles+1, nFrames+len(entries[i].Chunks)
		}
	}
	l.Files = make([]File, 0, nFiles)
	frames := make([]source.Range, 0, nFrames) // every file's Frames, carved from one array
	seen := make(map[string]struct{}, len(entries))
	var prevEnd int64
	for i, k := 0, 0; i < len(rows); k++ {
		e, m := &rows[i], &entries[k]
		if err := checkRow(e, i, seen); err != nil {
			return err
		}
		if !m.HasContent() {
			i++
			continue
		}
		next := i + len(m.Chunks)
		f, err := l.locate(rows[i:next], m, &frames)
		if err != nil {
			return err
		}
		if f.Range.Offset < prevEnd {
			return invalidf("frames of %q start at %d, before the previous file's end %d", e.Name, f.Range.Offset, prevEnd)
		}
		prevEnd = f.Range.End()
		l.Files = append(l.Files, f)
		i = next
	}
	return nil
}

// checkRow checks what the model does not: the name (and a hard link's target), that no name
// repeats, no negative numbers, no frames for an entry without content.
func checkRow(e *Entry, i int, seen map[string]struct{}) error {
	name, err := layername.Parse(e.Name)
	if err != nil {
		return fmt.Errorf("TOC entry %d: %w", i, err)
	}
	if e.Type == TypeLink {
		if _, err := layername.Link(e.Linkname); err != nil {
			return fmt.Errorf("TOC entry %d (%q) link target: %w", i, e.Name, err)
		}
	}
	if _, dup := seen[name.Path]; dup {
		return invalidf("TOC has duplicate entries for %q", e.Name)
	}
	seen[name.Path] = struct{}{}
	if e.Size < 0 || e.Mode < 0 || e.UID < 0 || e.GID < 0 {
		return invalidf("TOC entry %q has negative size, mode or owner", e.Name)
	}
	// Harmless in the reference's output, but nothing should be fetched for it.
	if e.Type != TypeReg && (e.Offset != 0 || e.EndOffset != 0) {
		return invalidf("TOC entry %q of type %s has frame offsets", e.Name, e.Type)
	}
	return nil
}

// locate builds the File of m from its rows (the reg row, then its chunk rows), appending its
// chunks' frames to frames.
func (l *Layer) locate(rows []Entry, m *layerfs.Entry, frames *[]source.Range) (File, error) {
	e := &rows[0]
	if e.Offset < 0 || e.Offset >= e.EndOffset || e.EndOffset > l.DataEnd {
		return File{}, invalidf("file %q: frames [%d, %d) not inside the data [0, %d)", e.Name, e.Offset, e.EndOffset, l.DataEnd)
	}
	f := File{Entry: m, Range: source.Range{Offset: e.Offset, Length: e.EndOffset - e.Offset}}
	first := len(*frames)
	if len(rows) == 1 {
		if e.ChunkSize != 0 && e.ChunkSize != e.Size {
			return File{}, invalidf("file %q: single chunk of %d bytes, file has %d", e.Name, e.ChunkSize, e.Size)
		}
		if err := checkExpansion(e.Name, e.Size, f.Range); err != nil {
			return File{}, err
		}
		*frames = append(*frames, f.Range)
	}
	for k := 0; len(rows) > 1 && k < len(rows); k++ {
		start, end := rows[k].Offset, e.EndOffset
		if k == 0 {
			start = e.Offset
		}
		if k+1 < len(rows) {
			end = rows[k+1].Offset
		}
		if start < e.Offset || start >= end || end > e.EndOffset {
			return File{}, invalidf("file %q: chunk frames [%d, %d) not in order inside the file's [%d, %d)", e.Name, start, end, e.Offset, e.EndOffset)
		}
		r := source.Range{Offset: start, Length: end - start}
		if err := checkExpansion(e.Name, m.Chunks[k].Size, r); err != nil {
			return File{}, err
		}
		*frames = append(*frames, r)
	}
	f.Frames = (*frames)[first:len(*frames):len(*frames)]
	return f, nil
}

// CheckTarSplit verifies that a layer's entries and its uncompressed tar-split describe the same
// entries: the same set of names, no duplicates, and equal type, name, link name, mode, size,
// owner, times, device numbers and xattrs.
func CheckTarSplit(entries []layerfs.Entry, tarSplit []byte) error {
	ts, err := tarstream.DecodeTarSplit(tarSplit, tarstream.MaxTarSplitLines)
	if err != nil {
		return err
	}
	return CheckTarSplitEntries(entries, ts)
}

// CheckTarSplitEntries is CheckTarSplit for a decoded tar-split. It compares each header with
// the entry of the same name as the model (HeaderEntry) gives it, and the TOC's order with the
// tar's.
func CheckTarSplitEntries(entries []layerfs.Entry, ts []storage.Entry) error {
	pending := make(map[string]*layerfs.Entry, len(entries))
	for i := range entries {
		e := &entries[i]
		if _, dup := pending[e.Name]; dup {
			return invalidf("TOC has duplicate entries for %q", e.Name)
		}
		pending[e.Name] = e
	}
	next := 0 // the TOC lists entries in tar order: the order they apply in (whiteouts, links)
	err := tarSplitHeaders(ts, func(hdr *vtar.Header) error {
		if hdr.Typeflag == vtar.TypeXGlobalHeader {
			return nil // no entry: the TOC has none for it either
		}
		if err := layername.CheckTOC(hdr.Name, hdr.Linkname); err != nil {
			return err // the TOC cannot name it: a full pull can
		}
		for k := range hdr.PAXRecords {
			if err := layername.CheckTOC(hdr.Name, k); err != nil {
				return err
			}
		}
		e, ok := pending[hdr.Name]
		if !ok {
			return invalidf("tar-split has an entry for %q that the TOC lacks (or lists twice)", hdr.Name)
		}
		delete(pending, hdr.Name)
		if e != &entries[next] {
			return invalidf("the tar has %q where the TOC lists %q: the TOC is not in tar order", hdr.Name, entries[next].Name)
		}
		next++
		want, err := HeaderEntry(tarstream.StdHeader(hdr))
		if err != nil {
			return fmt.Errorf("tar-split entry %q: %w", hdr.Name, err)
		}
		if err := SameEntryMetadata(e, &want); err != nil {
			return invalidf("TOC and tar-split disagree on %q: %v", hdr.Name, err)
		}
		return nil
	})
	if err != nil {
		if errors.Is(err, errdefs.ErrInvalid) || errors.Is(err, errdefs.ErrUnsupported) || errors.Is(err, errdefs.ErrNeedFull) {
			return err
		}
		return invalidf("tar-split: %v", err)
	}
	for name := range pending {
		return invalidf("TOC entry %q is missing from the tar-split", name)
	}
	return nil
}

// tarSplitHeaders calls fn with each header of the tar a tar-split rebuilds, as a tar reader
// reads that tar: one reader over the segments and, for each file entry, as many bytes of
// content (never read: skipped by seeking). So extension records apply to the header that
// follows them wherever the segments split them, and a byte a reader would take for a header or
// for content is one this check takes the same way. Each header must end its segment and be
// followed by its own file entry, with the same name and the size of content the reader skips:
// the rebuilt tar takes each file's content by that entry's name, so a mismatch would put one
// file's content under another's header. Sparse files are refused (a full pull stores them).
// After the end of the archive, only zero bytes may follow.
func tarSplitHeaders(entries []storage.Entry, fn func(*vtar.Header) error) error {
	for i := range entries {
		if t := entries[i].Type; t != storage.FileType && t != storage.SegmentType {
			return invalidf("tar-split entry type %d", t)
		}
	}
	v := &splitStream{entries: entries, content: -1}
	tr := vtar.NewReader(v)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return v.onlyZerosLeft()
		}
		if err != nil {
			return invalidf("tar header in tar-split: %v", err)
		}
		if hdr.Typeflag == vtar.TypeGNUSparse {
			return fmt.Errorf("tar-split: %q is a sparse file: %w", hdr.Name, errdefs.ErrNeedFull)
		}
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return fmt.Errorf("tar-split: %q is a sparse file: %w", hdr.Name, errdefs.ErrNeedFull)
			}
		}
		if v.i >= len(entries) || entries[v.i].Type != storage.SegmentType || v.off != int64(len(entries[v.i].Payload)) {
			return invalidf("tar-split header %q does not end its segment", hdr.Name)
		}
		if v.i+1 >= len(entries) || entries[v.i+1].Type != storage.FileType {
			return invalidf("tar-split header %q has no file entry", hdr.Name)
		}
		e := &entries[v.i+1]
		content := hdr.Size
		if headerOnly(hdr.Typeflag) {
			if hdr.Size > 0 && e.Size == hdr.Size {
				// As tar-split records such a header; the rebuilt tar would hold bytes a
				// reader skips as nobody's content: a full pull stores it as readers see it.
				return fmt.Errorf("tar-split: %q (type %q) has a size and content: %w", hdr.Name, hdr.Typeflag, errdefs.ErrNeedFull)
			}
			content = 0
		}
		if e.GetName() != hdr.Name || e.Size != content {
			return invalidf("tar-split file entry %q (%d bytes) under the header of %q (%d bytes of content)", e.GetName(), e.Size, hdr.Name, content)
		}
		v.content = v.i + 1
		if err := fn(hdr); err != nil {
			return err
		}
	}
}

// headerOnly says whether a tar reader takes no content after a header of type flag, whatever
// its size field says (archive/tar's isHeaderOnlyType).
func headerOnly(flag byte) bool {
	switch flag {
	case vtar.TypeLink, vtar.TypeSymlink, vtar.TypeChar, vtar.TypeBlock, vtar.TypeDir, vtar.TypeFifo:
		return true
	}
	return false
}

// splitStream is the tar a tar-split rebuilds, with every file's content as zero bytes that a
// reader skips by seeking. Position: off bytes into entries[i], abs into the stream. Only
// entries[content], the file entry of the header read last, may be read or skipped as content:
// any other file entry met is a reading error (content no header owns, which readers of the
// rebuilt tar would take for headers).
type splitStream struct {
	entries []storage.Entry
	i       int
	off     int64
	abs     int64
	content int
}

var errUnownedContent = errors.New("a file entry no header owns")

// enter checks that the reader may go into entries[i].
func (v *splitStream) enter(i int) error {
	if v.entries[i].Type == storage.FileType && i != v.content {
		return errUnownedContent
	}
	return nil
}

func (v *splitStream) size(i int) int64 {
	if e := &v.entries[i]; e.Type == storage.SegmentType {
		return int64(len(e.Payload))
	}
	return v.entries[i].Size
}

func (v *splitStream) Read(p []byte) (int, error) {
	for ; v.i < len(v.entries); v.i, v.off = v.i+1, 0 {
		if err := v.enter(v.i); err != nil {
			return 0, err
		}
		left := v.size(v.i) - v.off
		if left <= 0 {
			continue
		}
		var n int
		if e := &v.entries[v.i]; e.Type == storage.SegmentType {
			n = copy(p, e.Payload[v.off:])
		} else {
			n = int(min(int64(len(p)), left))
			clear(p[:n])
		}
		v.off += int64(n)
		v.abs += int64(n)
		return n, nil
	}
	return 0, io.EOF
}

// Seek moves forward only (what a tar reader does to skip content), and not past the end.
func (v *splitStream) Seek(offset int64, whence int) (int64, error) {
	if whence != io.SeekCurrent || offset < 0 {
		return 0, errors.New("tar-split stream: only forward seeks")
	}
	for offset > 0 && v.i < len(v.entries) {
		if err := v.enter(v.i); err != nil {
			return 0, err
		}
		step := min(offset, v.size(v.i)-v.off)
		v.off += step
		v.abs += step
		offset -= step
		if offset > 0 {
			v.i, v.off = v.i+1, 0
		}
	}
	return v.abs, nil
}

// onlyZerosLeft checks what follows the end of the archive: segments of zero bytes, and no file
// entry (a reader stops at the end; content after it would be nobody's).
func (v *splitStream) onlyZerosLeft() error {
	for j := v.i; j < len(v.entries); j++ {
		e := &v.entries[j]
		if e.Type == storage.FileType {
			return invalidf("tar-split file entry %q after the end of the archive", e.GetName())
		}
		rest := e.Payload
		if j == v.i {
			rest = rest[min(v.off, int64(len(rest))):]
		}
		for _, c := range rest {
			if c != 0 {
				return invalidf("tar-split has data after the end of the archive")
			}
		}
	}
	return nil
}

// SameEntryMetadata compares the fields the reference compares (not digests or chunks): the
// metadata a tar header holds, which a TOC and a tar-split must agree on (xattrs compared
// decoded). It says which field differs.
func SameEntryMetadata(a, b *layerfs.Entry) error {
	switch {
	case a.Type != b.Type:
		return fmt.Errorf("type %q != %q", a.Type, b.Type)
	case a.Name != b.Name:
		return fmt.Errorf("name %q != %q", a.Name, b.Name)
	case a.Linkname != b.Linkname:
		return fmt.Errorf("linkName %q != %q", a.Linkname, b.Linkname)
	case a.Mode != b.Mode:
		return fmt.Errorf("mode %#o != %#o", a.Mode, b.Mode)
	case a.Size != b.Size:
		return fmt.Errorf("size %d != %d", a.Size, b.Size)
	case a.UID != b.UID:
		return fmt.Errorf("uid %d != %d", a.UID, b.UID)
	case a.GID != b.GID:
		return fmt.Errorf("gid %d != %d", a.GID, b.GID)
	case !sameTime(a.ModTime, b.ModTime):
		return fmt.Errorf("modtime %v != %v", a.ModTime, b.ModTime)
	case !sameTime(a.AccessTime, b.AccessTime):
		return fmt.Errorf("accesstime %v != %v", a.AccessTime, b.AccessTime)
	case !sameTime(a.ChangeTime, b.ChangeTime):
		return fmt.Errorf("changetime %v != %v", a.ChangeTime, b.ChangeTime)
	case a.Devmajor != b.Devmajor:
		return fmt.Errorf("devMajor %d != %d", a.Devmajor, b.Devmajor)
	case a.Devminor != b.Devminor:
		return fmt.Errorf("devMinor %d != %d", a.Devminor, b.Devminor)
	case !maps.EqualFunc(a.Xattrs, b.Xattrs, bytes.Equal):
		return fmt.Errorf("xattrs %q != %q", a.Xattrs, b.Xattrs)
	}
	return nil
}

// sameTime treats nil, the zero time and the Unix epoch alike, as the reference does (tar cannot
// tell them apart).
func sameTime(a, b *time.Time) bool {
	norm := func(t *time.Time) *time.Time {
		if t != nil && (t.IsZero() || t.Equal(time.Unix(0, 0))) {
			return nil
		}
		return t
	}
	a, b = norm(a), norm(b)
	if a == nil || b == nil {
		return a == b
	}
	return a.Equal(*b)
}

// DecodeFrames decompresses the zstd frames of one file or chunk from r into w, refusing more
// than size bytes (no decompression bombs), and checks that the content has the given size and
// digest. Bytes reach w before the digest is known: treat them as unverified until it returns nil.
func DecodeFrames(r io.Reader, size int64, want digest.Digest, w io.Writer) error {
	if err := want.Validate(); err != nil {
		return invalidf("digest %q: %v", want, err)
	}
	v := want.Verifier()
	if err := DecodeFramesUnverified(r, size, io.MultiWriter(w, v)); err != nil {
		return err
	}
	if !v.Verified() {
		return fmt.Errorf("content does not match %s: %w", want, errdefs.ErrDigestMismatch)
	}
	return nil
}

// DecodeFramesUnverified is DecodeFrames for a caller that verifies the content itself (a
// store writer given the expected digest does): it decompresses exactly size bytes, and no
// more, without hashing them.
func DecodeFramesUnverified(r io.Reader, size int64, w io.Writer) error {
	d, err := getDecoder(boundedWindow(r, size))
	if err != nil {
		return err
	}
	defer putDecoder(d)
	n, err := io.Copy(w, io.LimitReader(d, size+1))
	if err != nil {
		if errors.Is(err, zstd.ErrDecoderSizeExceeded) || errors.Is(err, zstd.ErrWindowSizeExceeded) {
			return fmt.Errorf("frames decompress beyond %d bytes: %w", size, errdefs.ErrDigestMismatch)
		}
		return invalidf("decompressing frames: %v", err)
	}
	if n != size {
		return fmt.Errorf("frames decompress to %d bytes, expected %d: %w", n, size, errdefs.ErrDigestMismatch)
	}
	return nil
}

// ReadFile writes the verified content of f, read from blob, to w.
func ReadFile(blob io.ReaderAt, f *File, w io.Writer) error {
	if err := DecodeFrames(io.NewSectionReader(blob, f.Range.Offset, f.Range.Length), f.Entry.Size, f.Entry.Digest, w); err != nil {
		return fmt.Errorf("file %q: %w", f.Entry.Name, err)
	}
	return nil
}

// ReadChunk writes the verified content of one chunk, read from blob, to w.
func ReadChunk(blob io.ReaderAt, c *FileChunk, w io.Writer) error {
	if err := DecodeFrames(io.NewSectionReader(blob, c.Range.Offset, c.Range.Length), c.Size, c.Digest, w); err != nil {
		return fmt.Errorf("chunk at %d: %w", c.Offset, err)
	}
	return nil
}

// File returns the regular file with content named name, if any.
func (l *Layer) File(name string) *File {
	for i := range l.Files {
		if l.Files[i].Entry.Name == name {
			return &l.Files[i]
		}
	}
	return nil
}

// RebuildTar writes the layer's exact tar stream from its tar-split and the file frames in blob,
// checking every file's digest; its sha256 is the DiffID. It fails with ErrUnsupported for
// layers without tar-split.
func (l *Layer) RebuildTar(blob io.ReaderAt, w io.Writer) error {
	if l.TarSplit == nil {
		return fmt.Errorf("layer has no tar-split, its tar cannot be rebuilt: %w", errdefs.ErrUnsupported)
	}
	byName := make(map[string]*File, len(l.Files))
	for i := range l.Files {
		byName[l.Files[i].Entry.Name] = &l.Files[i]
	}
	return tarstream.RebuildEntries(l.TarSplitEntries, func(name string, size int64) (io.ReadCloser, error) {
		f, ok := byName[name]
		if !ok || f.Entry.Size != size {
			return nil, invalidf("tar-split file %q (%d bytes) has no matching TOC file", name, size)
		}
		pr, pw := io.Pipe()
		go func() { pw.CloseWithError(ReadFile(blob, f, pw)) }()
		return pr, nil
	}, w)
}

// DiffID rebuilds the tar (see RebuildTar) and returns its digest.
func (l *Layer) DiffID(blob io.ReaderAt) (digest.Digest, error) {
	h := sha256.New()
	if err := l.RebuildTar(blob, h); err != nil {
		return "", err
	}
	return digest.NewDigest(digest.SHA256, h), nil
}
