package tarsplit

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/tarstream"
)

// CRCFunc returns the tar-split checksum (CRC-64/ISO, 8 bytes big-endian, as hash/crc64's Sum)
// of the content with digest d and size bytes. Predict calls it only for content no known layer
// has, so a puller can compute it from the files it has just fetched.
type CRCFunc func(d digest.Digest, size int64) ([]byte, error)

// crcSize is the length of a CRC-64 checksum.
const crcSize = 8

// Stats says how a prediction was made.
type Stats struct {
	Reused      int // headers copied from a known entry with the same metadata
	Synthesized int // headers written anew (changed or new entries)
	NewCRCs     int // content CRCs asked of the CRCFunc
}

// Predict returns the tar-split of the layer whose entries (package layerfs, as chunked.Parse
// decodes its TOC) are given, compressed as the writer compresses it (zstd level 10), and its
// uncompressed JSON. The compressed bytes are checked against tarSplitDigest, the TOC's: on a
// mismatch the error wraps errdefs.ErrDigestMismatch and the caller should fetch the real
// tar-split. known are layers already stored, most similar first: where two hold the same name,
// the first wins.
func Predict(entries []layerfs.Entry, tarSplitDigest string, known []Known, crc CRCFunc) (compressed, tarSplit []byte, err error) {
	if _, err := digest.Parse(tarSplitDigest); err != nil {
		return nil, nil, fmt.Errorf("TOC tarSplitDigest %q: %w: %w", tarSplitDigest, errdefs.ErrInvalid, err)
	}
	tarSplit, _, err = PredictJSON(entries, known, crc)
	if err != nil {
		return nil, nil, err
	}
	compressed, err = Compress(tarSplit)
	if err != nil {
		return nil, nil, err
	}
	if err := CheckDigest(tarSplitDigest, compressed); err != nil {
		return nil, nil, err
	}
	return compressed, tarSplit, nil
}

// CheckDigest checks compressed tar-split bytes against the TOC's tarSplitDigest; a mismatch
// wraps errdefs.ErrDigestMismatch.
func CheckDigest(tarSplitDigest string, compressed []byte) error {
	want, err := digest.Parse(tarSplitDigest)
	if err != nil {
		return fmt.Errorf("TOC tarSplitDigest %q: %w: %w", tarSplitDigest, errdefs.ErrInvalid, err)
	}
	if got := want.Algorithm().FromBytes(compressed); got != want {
		return fmt.Errorf("predicted tar-split has digest %s, the TOC says %s: %w", got, want, errdefs.ErrDigestMismatch)
	}
	return nil
}

// PredictJSON returns the predicted uncompressed tar-split without compressing or checking it.
// A wrong prediction still cannot go unnoticed if the caller rebuilds the tar and checks the
// DiffID, which it must do anyway after a partial pull.
func PredictJSON(entries []layerfs.Entry, known []Known, crc CRCFunc) ([]byte, Stats, error) {
	var out bytes.Buffer
	out.Grow(estimateSize(entries, known))
	st, err := predict(entries, known, crc, false, jsonSink{tarstream.NewPacker(&out, len(entries))})
	if err != nil {
		return nil, st, err
	}
	return out.Bytes(), st, nil
}

// PredictEntries is PredictJSON for a caller that wants the tar-split decoded, as
// tarstream.DecodeTarSplit would return it: it writes no JSON. It consumes the known layers'
// TarSplit: their memory is reused for the decoded segments, which the entries share; a known
// layer given as a Stream is read once, and only the segments are kept. File
// entries carry their CRC as the payload; tarstream.WriteTarSplit turns the entries into the tar-split.
func PredictEntries(entries []layerfs.Entry, known []Known, crc CRCFunc) ([]storage.Entry, Stats, error) {
	ix, err := IndexKnown(known)
	if err != nil {
		return nil, Stats{}, err
	}
	return ix.Predict(entries, crc)
}

// Index is known layers indexed for one prediction (PredictEntries' first half): a caller can
// make it before it has the entries to predict, beside fetching them. It serves one prediction.
type Index struct {
	ix   *templates
	used bool
}

// IndexKnown indexes known layers for Predict, consuming them as PredictEntries does.
func IndexKnown(known []Known) (*Index, error) {
	ix, err := indexAll(known, true)
	if err != nil {
		return nil, err
	}
	return &Index{ix: ix}, nil
}

// Predict is PredictEntries with the known layers indexed already.
func (x *Index) Predict(entries []layerfs.Entry, crc CRCFunc) ([]storage.Entry, Stats, error) {
	if x.used {
		return nil, Stats{}, fmt.Errorf("an index of known layers serves one prediction")
	}
	x.used = true
	n := len(entries) // tar entries: a segment and a file line each, and a few segments at the end
	es := &entrySink{entries: make([]storage.Entry, 0, 2*n+8), seen: make(tarstream.PathSet, n)}
	st, err := predictWith(x.ix, entries, crc, es)
	if err != nil {
		return nil, st, err
	}
	return es.entries, st, nil
}

// indexAll indexes the known layers, with the CRCs of their contents.
func indexAll(known []Known, inPlace bool) (*templates, error) {
	crcs := map[digest.Digest][]byte{}
	layers := make([]*layerIndex, 0, len(known))
	for i, k := range known {
		idx, err := indexKnown(k, crcs, inPlace)
		if err != nil {
			return nil, fmt.Errorf("known layer %d: %w", i, err)
		}
		layers = append(layers, idx)
	}
	ix := newTemplates(layers)
	ix.crcs = crcs
	return ix, nil
}

func predict(entries []layerfs.Entry, known []Known, crc CRCFunc, inPlace bool, out sink) (Stats, error) {
	ix, err := indexAll(known, inPlace)
	if err != nil {
		return Stats{}, err
	}
	return predictWith(ix, entries, crc, out)
}

// predictWith writes the predicted tar-split of entries to out, in tar order.
func predictWith(ix *templates, entries []layerfs.Entry, crc CRCFunc, out sink) (Stats, error) {
	var st Stats
	var (
		seg      []byte
		prevSize int64
		first    = true
		total    int64 // bytes of the tar stream so far
	)
	for i := range entries {
		e := &entries[i]
		if e.Size < 0 {
			return st, fmt.Errorf("%q has size %d: %w", e.Name, e.Size, errdefs.ErrInvalid)
		}
		pad := 0
		if !first {
			pad = int(padding(prevSize))
		}
		name := e.Name
		if r := ix.find(e); r != nil && r.single && r.pad == pad {
			// The common case: the entry and the one before it are unchanged.
			out.reuse(r)
			total += int64(len(r.seg))
			name = r.name
			st.Reused++
		} else {
			var raw []byte
			var err error
			if r != nil {
				raw, err = r.header()
				name = r.name
				st.Reused++
			} else {
				raw, err = ix.synthesize(e)
				st.Synthesized++
			}
			if err != nil {
				return st, err
			}
			seg = append(append(seg[:0], make([]byte, pad)...), raw...)
			out.segment(seg)
			total += int64(len(seg))
		}
		var sum []byte
		if e.Size > 0 {
			var err error
			if sum, err = ix.crc(e, crc, &st); err != nil {
				return st, err
			}
		}
		if err := out.file(name, e.Size, sum); err != nil {
			return st, fmt.Errorf("%w: %w", errdefs.ErrInvalid, err)
		}
		total += e.Size
		prevSize, first = e.Size, false
	}
	ix.tail(out, first, prevSize, total)
	return st, nil
}

// estimateSize guesses the JSON size to spare the buffer's growth, without more memory than it
// needs (fresh memory is dear): the first known tar-split's bytes per TOC entry, times the
// entries, with a margin; or a header segment (base64) and a file line per entry.
func estimateSize(entries []layerfs.Entry, known []Known) int {
	n := len(entries) * 900
	if len(known) > 0 && len(known[0].Entries) > 0 {
		perEntry := float64(len(known[0].TarSplit)) / float64(len(known[0].Entries))
		n = int(perEntry*float64(len(entries))*1.02) + 64<<10
	}
	return min(n, 256<<20) + 4096
}

// templates indexes the known layers' entries for prediction.
type templates struct {
	layers []*layerIndex
	crcs   map[digest.Digest][]byte // by content digest
	byName map[string][]*record
	// byOwner models entries whose name no known layer has: an entry of the same type and
	// owner, else of the same type, else any.
	byOwner map[ownerKey]*record
	byType  map[layerfs.Type]*record
	anyRec  *record
	// byUID and byGID find a known entry of an owner, whose header names it.
	byUID, byGID map[int]*record
	unames       map[int]string
	gnames       map[int]string
}

type ownerKey struct {
	typ      layerfs.Type
	uid, gid int
}

func newTemplates(layers []*layerIndex) *templates {
	ix := &templates{
		layers:  layers,
		byOwner: map[ownerKey]*record{},
		byType:  map[layerfs.Type]*record{},
		byUID:   map[int]*record{},
		byGID:   map[int]*record{},
		unames:  map[int]string{},
		gnames:  map[int]string{},
	}
	n := 0
	for _, l := range layers {
		n += len(l.records)
	}
	ix.byName = make(map[string][]*record, n)
	for _, l := range layers {
		for i := range l.records {
			r := &l.records[i]
			e := r.entry
			ix.byName[e.Name] = append(ix.byName[e.Name], r)
			k := ownerKey{e.Type, e.UID, e.GID}
			if _, ok := ix.byOwner[k]; !ok {
				ix.byOwner[k] = r
			}
			if _, ok := ix.byType[e.Type]; !ok {
				ix.byType[e.Type] = r
			}
			if ix.anyRec == nil {
				ix.anyRec = r
			}
			if _, ok := ix.byUID[e.UID]; !ok {
				ix.byUID[e.UID] = r
			}
			if _, ok := ix.byGID[e.GID]; !ok {
				ix.byGID[e.GID] = r
			}
		}
	}
	return ix
}

// find returns a known entry with e's name and metadata, whose header can be reused.
func (ix *templates) find(e *layerfs.Entry) *record {
	for _, r := range ix.byName[e.Name] {
		if sameEntry(r.entry, e) {
			return r
		}
	}
	return nil
}

// synthesize writes e's header, modelled on the known entry of the same name if there is one,
// else on one of the same type and owner.
func (ix *templates) synthesize(e *layerfs.Entry) ([]byte, error) {
	// A TOC name is lossy where the tar name is not UTF-8; only a reused header has the original.
	if strings.ContainsRune(e.Name, utf8.RuneError) || strings.ContainsRune(e.Linkname, utf8.RuneError) {
		return nil, fmt.Errorf("%q: name may not be the tar's (not UTF-8): %w", e.Name, errdefs.ErrUnsupported)
	}
	var tmpl *record
	if same := ix.byName[e.Name]; len(same) > 0 {
		tmpl = same[0]
	} else if r := ix.byOwner[ownerKey{e.Type, e.UID, e.GID}]; r != nil {
		tmpl = r
	} else if r := ix.byType[e.Type]; r != nil {
		tmpl = r
	} else {
		tmpl = ix.anyRec
	}
	return synthesize(e, tmpl, ix)
}

// uname returns the user name known entries of uid carry.
func (ix *templates) uname(uid int) (string, bool) {
	return ownerName(ix.byUID[uid], ix.unames, uid, func(h *tar.Header) string { return h.Uname })
}

// gname returns the group name known entries of gid carry.
func (ix *templates) gname(gid int) (string, bool) {
	return ownerName(ix.byGID[gid], ix.gnames, gid, func(h *tar.Header) string { return h.Gname })
}

// ownerName reads an owner's name from the header of r, an entry of that owner, and caches it:
// headers are parsed on demand, as only changed entries need names.
func ownerName(r *record, cache map[int]string, id int, name func(*tar.Header) string) (string, bool) {
	if n, ok := cache[id]; ok {
		return n, true
	}
	if r == nil {
		return "", false
	}
	raw, err := r.header()
	if err != nil {
		return "", false
	}
	h, err := parseRaw(raw)
	if err != nil {
		return "", false
	}
	cache[id] = name(h)
	return cache[id], true
}

// crc returns the tar-split checksum of e's content.
func (ix *templates) crc(e *layerfs.Entry, crc CRCFunc, st *Stats) ([]byte, error) {
	if e.Type != layerfs.TypeReg {
		return nil, fmt.Errorf("%q: %s entry with %d bytes of content: %w", e.Name, e.Type, e.Size, errdefs.ErrUnsupported)
	}
	if sum, ok := ix.crcs[e.Digest]; ok {
		return sum, nil
	}
	d := e.Digest
	if err := d.Validate(); err != nil {
		return nil, fmt.Errorf("%q: digest %q: %w: %w", e.Name, e.Digest, errdefs.ErrInvalid, err)
	}
	if crc == nil {
		return nil, fmt.Errorf("%q: content %s is not in a known layer: %w", e.Name, d, errdefs.ErrNotFound)
	}
	sum, err := crc(d, e.Size)
	if err != nil {
		return nil, fmt.Errorf("CRC of %q: %w", e.Name, err)
	}
	if len(sum) != crcSize {
		return nil, fmt.Errorf("CRC of %q has %d bytes, want %d: %w", e.Name, len(sum), crcSize, errdefs.ErrInvalid)
	}
	st.NewCRCs++
	ix.crcs[e.Digest] = sum
	return sum, nil
}

// recordSize is the tar record GNU tar (and others) pad archives to, by default.
const recordSize = 20 * 512

// tail writes the segments after the last entry: its padding and the end of the archive as the
// first known layer ends (Go's two zero blocks when none is known). Trailing zeros past them
// that filled the known archive to a record fill this one to a record too.
func (ix *templates) tail(p sink, empty bool, lastSize, total int64) {
	eof := make([]byte, 1024)
	var rest [][]byte
	var knownSize int64
	if len(ix.layers) > 0 {
		l := ix.layers[0]
		eof, rest, knownSize = l.eof, l.rest, l.size
	}
	pad := 0
	if !empty {
		pad = int(padding(lastSize))
	}
	first := append(make([]byte, pad, pad+len(eof)), eof...)
	segs := [][]byte{first}
	total += int64(len(first))
	if len(rest) > 0 && knownSize%recordSize == 0 && allZero(bytes.Join(rest, nil)) {
		if n := (recordSize - total%recordSize) % recordSize; n > 0 {
			segs = append(segs, make([]byte, n))
		}
	} else {
		segs = append(segs, rest...)
	}
	for _, s := range segs {
		if len(s) == 0 {
			continue
		}
		p.segment(s)
	}
}

// Level is the zstd level the writer compresses tar-splits at (chunked's default).
const Level = chunked.DefaultLevel

// Compress compresses a tar-split JSON stream as the writer does at Level.
func Compress(tarSplit []byte) ([]byte, error) { return chunked.CompressTarSplit(tarSplit, Level) }
