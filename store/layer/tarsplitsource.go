package layer

import (
	"context"
	"crypto/sha256"
	"fmt"
	"hash/crc64"
	"io"
	"slices"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/tarsplit"
	"github.com/kura-oci/kura/tarstream"
)

// TarSplitSource is where a partial import gets the layer's tar-split, which rebuilds the tar
// for the DiffID and goes into the layer record: fetched from the blob with the TOC
// (*FetchedTarSplit), or predicted from a stored layer (PredictTarSplit). The import calls
// begin beside the planning, verify beside the fetch, record beside the commit, settle last.
type TarSplitSource interface {
	// begin starts what needs only the TOC.
	begin(l *chunked.Layer)
	// verify checks the tar-split against the TOC and rebuilds the tar with it, reading each
	// object through open, which waits for objects still being fetched.
	verify(ctx context.Context, l *chunked.Layer, diffID digest.Digest, open opener) verdict
	// record makes the layer record's tar-split once every object is fetched.
	record(open opener) tarSplitRecord
	// settle finishes what verify left open, with every object committed (open reads the
	// store), and returns the tar-split to record.
	settle(ctx context.Context, l *chunked.Layer, diffID digest.Digest, v verdict, rec tarSplitRecord, open opener) (tarSplitRecord, error)
}

// opener opens an object by digest.
type opener func(digest.Digest) (io.ReadCloser, error)

// verdict is what the early verification of a layer found.
type verdict struct {
	size        int64 // of the rebuilt tar
	err         error
	metadataErr error // TOC and fetched tar-split disagree
	// wrongPrediction: the predicted tar-split could not be made, or does not rebuild the tar;
	// the real one is fetched.
	wrongPrediction error
}

// tarSplitRecord is the tar-split as the layer record keeps it.
type tarSplitRecord struct {
	zst       []byte // compressed
	size      int64  // uncompressed
	tarSize   int64  // of the tar it rebuilds
	predicted bool
	note      string
	err       error
}

// FetchedTarSplit is a tar-split fetched from the blob and parsed (pull's parse checks that the
// TOC can carry it).
type FetchedTarSplit struct {
	Entries []storage.Entry
	// Check compares the entries with the TOC; it runs beside the rebuild.
	Check func() error
	// Zst is the blob's tar-split frame, recorded as it is; Size is its uncompressed size.
	Zst  []byte
	Size int64
}

func (f *FetchedTarSplit) begin(*chunked.Layer) {}

// verify compares TOC and tar-split and, beside it, rebuilds the tar for the DiffID.
func (f *FetchedTarSplit) verify(ctx context.Context, l *chunked.Layer, diffID digest.Digest, open opener) verdict {
	checked := make(chan error, 1)
	go func() { checked <- f.Check() }()
	n, err := checkDiffID(ctx, l.Files, f.Entries, diffID, open)
	cerr := <-checked
	if cerr != nil {
		err = cerr
	}
	return verdict{size: n, err: err, metadataErr: cerr}
}

// record keeps the blob's frame, re-framed with the store's small window if it declares a
// larger one (store.NarrowMetadataFrame), so that later updates predicting from this layer
// stream it in little memory.
func (f *FetchedTarSplit) record(opener) tarSplitRecord {
	zst, err := store.NarrowMetadataFrame(f.Zst)
	return tarSplitRecord{zst: zst, size: f.Size, err: err}
}

// settle: an early rebuild that could not read something (an object another layer of the same
// pull was still writing, say) is done again, now that everything is stored.
func (f *FetchedTarSplit) settle(ctx context.Context, l *chunked.Layer, diffID digest.Digest, v verdict, rec tarSplitRecord, open opener) (tarSplitRecord, error) {
	if rec.err != nil {
		return rec, rec.err
	}
	if v.err != nil {
		v.size, v.err = checkDiffID(ctx, l.Files, f.Entries, diffID, open)
	}
	rec.tarSize = v.size
	return rec, v.err
}

// checkDiffID rebuilds the layer's tar from tar-split entries and objects (opened by open) and
// compares its sha256 with the DiffID the config promises. It returns the tar's size.
func checkDiffID(ctx context.Context, files []chunked.File, entries []storage.Entry, diffID digest.Digest, open opener) (int64, error) {
	byName := make(map[string]digest.Digest, len(files))
	for _, f := range files {
		byName[f.Entry.Name] = f.Entry.Digest
	}
	h := sha256.New()
	err := tarstream.RebuildEntries(entries, func(name string, size int64) (io.ReadCloser, error) {
		d, ok := byName[name]
		if !ok {
			return nil, fmt.Errorf("tar-split names %q, which the TOC has no content for: %w", name, errdefs.ErrInvalid)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return open(d)
	}, h)
	if err != nil {
		return 0, fmt.Errorf("rebuilding the tar: %w", err)
	}
	if got := digest.NewDigest(digest.SHA256, h); got != diffID {
		return 0, fmt.Errorf("rebuilt tar: %w", &DiffIDMismatchError{Got: got, Want: diffID})
	}
	// The rebuild wrote every segment and exactly each file's size (else it failed).
	return tarSize(entries), nil
}

// tarSize is the size of the tar entries rebuild.
func tarSize(entries []storage.Entry) int64 {
	var size int64
	for _, e := range entries {
		if e.Type == storage.SegmentType {
			size += int64(len(e.Payload))
		} else {
			size += e.Size
		}
	}
	return size
}

// FetchFunc fetches and parses a layer's real tar-split.
type FetchFunc func(ctx context.Context) (*FetchedTarSplit, error)

// PredictTarSplit returns a tar-split source that predicts the layer's tar-split from stored
// layer prev's (package tarsplit) and verifies the prediction with the DiffID, so that an update
// of a stored layer needs no tar-split from the registry; only a wrong prediction costs fetch,
// the real one. prev's entries are read and its tar-split indexed at once, beside the fetch and
// parse of the layer's own TOC, which the prediction then waits for: that work was on the
// pull's critical path, before the hash of the DiffID could start.
func PredictTarSplit(ctx context.Context, s *store.Store, prev digest.Digest, fetch FetchFunc) TarSplitSource {
	p := &predicted{known: make(chan knownLayer, 1), fetch: fetch}
	go func() { p.known <- loadKnown(ctx, s, prev) }()
	return p
}

// predicted is a tar-split predicted from a stored layer.
type predicted struct {
	known chan knownLayer // sent once loaded
	pred  *prediction
	fetch FetchFunc
}

// begin predicts the tar-split from the TOC, beside the planning.
func (p *predicted) begin(l *chunked.Layer) {
	p.pred = &prediction{done: make(chan struct{})}
	go func() {
		defer close(p.pred.done)
		predictTarSplit(p.pred, <-p.known, l.Entries)
	}()
}

// verify checks the prediction against the TOC and rebuilds the tar with it for the DiffID. Any
// error means: fetch the real one.
//
// The TOC check runs beside the hash. The tar does not depend on tar-split's CRCs, which the
// prediction must compute for new content, once fetched. So the prediction is made with
// placeholder CRCs and goes to the rebuild right away, beside the fetch; the real CRCs replace
// the placeholders afterwards.
func (p *predicted) verify(ctx context.Context, l *chunked.Layer, diffID digest.Digest, open opener) verdict {
	<-p.pred.done
	if p.pred.err != nil {
		return verdict{wrongPrediction: p.pred.err}
	}
	checked := make(chan error, 1)
	go func() { checked <- chunked.CheckTarSplitEntries(l.Entries, p.pred.entries) }()
	n, err := checkDiffID(ctx, l.Files, p.pred.entries, diffID, open)
	if cerr := <-checked; err == nil {
		err = cerr
	}
	if err != nil {
		return verdict{wrongPrediction: fmt.Errorf("predicted tar-split: %w", err)}
	}
	return verdict{size: n}
}

// record turns the prediction into the layer record's tar-split once the new files are in:
// real CRCs for the placeholders, then JSON, compressed as it is written. The entries the
// rebuild reads are not touched, so it runs beside the rebuild.
func (p *predicted) record(open opener) tarSplitRecord {
	<-p.pred.done
	if p.pred.err != nil {
		return tarSplitRecord{err: p.pred.err}
	}
	entries, err := withRealCRCs(p.pred.entries, p.pred.pending, tarsplit.OpenCRC(open))
	if err != nil {
		return tarSplitRecord{err: fmt.Errorf("predicted tar-split: %w", err)}
	}
	zst, n, err := store.CompressMetadataStream(func(w io.Writer) error { return tarstream.WriteTarSplit(w, entries) })
	return tarSplitRecord{zst: zst, size: n, err: err, predicted: true}
}

// settle keeps a verified prediction, or fetches the real tar-split and checks it as usual.
func (p *predicted) settle(ctx context.Context, l *chunked.Layer, diffID digest.Digest, v verdict, rec tarSplitRecord, open opener) (tarSplitRecord, error) {
	wrong := v.wrongPrediction
	if wrong == nil && rec.err == nil {
		rec.tarSize = v.size
		return rec, nil
	}
	if wrong == nil {
		wrong = rec.err
	}
	real, err := p.fetch(ctx)
	if err != nil {
		return tarSplitRecord{}, err
	}
	if err := real.Check(); err != nil {
		return tarSplitRecord{}, err
	}
	zst, err := store.NarrowMetadataFrame(real.Zst)
	if err != nil {
		return tarSplitRecord{}, err
	}
	size, err := checkDiffID(ctx, l.Files, real.Entries, diffID, open)
	return tarSplitRecord{zst: zst, size: real.Size, tarSize: size, note: "tar-split fetched: " + wrong.Error()}, err
}

// knownLayer is a stored layer to predict a tar-split from: its entries, and its tar-split
// indexed. The index is made from the tar-split streamed, so that it keeps only the headers a
// prediction reuses, not the whole JSON (a dozen megabytes for a base image, several times
// those headers).
type knownLayer struct {
	entries []layerfs.Entry
	index   *tarsplit.Index
	err     error
}

func loadKnown(ctx context.Context, s *store.Store, prev digest.Digest) knownLayer {
	entries, err := s.LayerEntries(ctx, prev)
	if err != nil {
		return knownLayer{err: err}
	}
	ts, err := s.LayerTarSplitReader(ctx, prev)
	if err != nil {
		return knownLayer{err: err}
	}
	defer ts.Close()
	ix, err := tarsplit.IndexKnown([]tarsplit.Known{{Entries: entries, Stream: ts}})
	if err != nil {
		return knownLayer{err: fmt.Errorf("predicting the tar-split: %w", err)}
	}
	return knownLayer{entries: entries, index: ix}
}

// prediction is a predicted tar-split whose new contents (pending) have placeholder CRCs; its
// fields are set when done closes.
type prediction struct {
	done    chan struct{}
	entries []storage.Entry
	pending []pendingCRC
	err     error
}

// predictTarSplit predicts a layer's tar-split from a stored layer's, with placeholder CRCs.
func predictTarSplit(p *prediction, k knownLayer, entries []layerfs.Entry) {
	if k.err != nil {
		p.err = k.err
		return
	}
	if err := enoughShared(k.entries, entries); err != nil {
		p.err = err
		return
	}
	// The tar rebuilt for the DiffID does not depend on CRCs, so contents still to be fetched
	// get a placeholder, known by its address, and their real CRC afterwards.
	placeholder := func(d digest.Digest, size int64) ([]byte, error) {
		b := make([]byte, crc64.Size)
		p.pending = append(p.pending, pendingCRC{d: d, size: size, slot: &b[0]})
		return b, nil
	}
	var err error
	if p.entries, _, err = k.index.Predict(entries, placeholder); err != nil {
		p.err = fmt.Errorf("predicting the tar-split: %w", err)
	}
}

// enoughShared refuses to predict from a layer of another image, which shares too little. It
// counts TOC rows, as the TOC lists them: a file of several chunks weighs one per chunk.
func enoughShared(known, entries []layerfs.Entry) error {
	names := make(map[string]bool, len(known))
	for i := range known {
		names[known[i].Name] = true
	}
	shared, rows := 0, 0
	for i := range entries {
		n := max(len(entries[i].Chunks), 1)
		rows += n
		if names[entries[i].Name] {
			shared += n
		}
	}
	if shared < rows/2 {
		return fmt.Errorf("the stored layer shares %d of %d entries: nothing to predict from", shared, rows)
	}
	return nil
}

// pendingCRC is a content whose CRC a prediction left as a placeholder: the slice starting at
// slot, which every file entry of that content carries.
type pendingCRC struct {
	d    digest.Digest
	size int64
	slot *byte
}

// withRealCRCs returns a copy of a prediction's entries with each placeholder replaced by its
// content's real CRC. Every placeholder must be found.
func withRealCRCs(entries []storage.Entry, pending []pendingCRC, crc tarsplit.CRCFunc) ([]storage.Entry, error) {
	if len(pending) == 0 {
		return entries, nil
	}
	real := make(map[*byte][]byte, len(pending))
	for _, p := range pending {
		sum, err := crc(p.d, p.size)
		if err != nil {
			return nil, err
		}
		real[p.slot] = sum
	}
	out := slices.Clone(entries)
	found := make(map[*byte]bool, len(pending))
	for i := range out {
		e := &out[i]
		if e.Type != storage.FileType || len(e.Payload) == 0 {
			continue
		}
		if sum, ok := real[&e.Payload[0]]; ok {
			found[&e.Payload[0]] = true
			e.Payload = sum
		}
	}
	for _, p := range pending {
		if !found[p.slot] {
			return nil, fmt.Errorf("the CRC placeholder of %s is in no entry: %w", p.d, errdefs.ErrInvalid)
		}
	}
	return out, nil
}
