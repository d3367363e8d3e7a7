package tarsplit

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"hash/crc64"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/tarstream"
)

// layer is a converted tar: what a puller would see (TOC, compressed tar-split) and what the
// store would hold (the uncompressed tar-split).
type layer struct {
	toc        *chunked.TOC
	entries    []layerfs.Entry // the TOC decoded, as chunked.Parse gives it
	tarSplit   []byte          // uncompressed
	compressed []byte          // as in the blob
	crcs       map[digest.Digest][]byte
}

func (l *layer) known() Known { return Known{Entries: l.entries, TarSplit: l.tarSplit} }

// convert runs the writer over a tar and reads back its metadata as a puller does.
func convert(t testing.TB, tarBytes []byte) *layer {
	t.Helper()
	var blob bytes.Buffer
	if _, err := chunked.Convert(context.Background(), bytes.NewReader(tarBytes), &blob); err != nil {
		t.Fatalf("converting: %v", err)
	}
	b := blob.Bytes()
	loc, err := chunked.LocateFromFooter(b[len(b)-chunked.FooterFetchSize:], int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	ts := b[loc.TarSplit.Offset:loc.TarSplit.End()]
	l, err := chunked.Parse(loc, b[loc.TOC.Offset:loc.TOC.End()], ts)
	if err != nil {
		t.Fatal(err)
	}
	return &layer{toc: l.TOC, entries: l.Entries, tarSplit: l.TarSplit, compressed: bytes.Clone(ts), crcs: contentCRCs(t, tarBytes)}
}

// contentCRCs maps every regular file's content digest to its tar-split CRC.
func contentCRCs(t testing.TB, tarBytes []byte) map[digest.Digest][]byte {
	t.Helper()
	m := map[digest.Digest][]byte{}
	tr := tar.NewReader(bytes.NewReader(tarBytes))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return m
		}
		if err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag != tar.TypeReg || hdr.Size == 0 {
			continue
		}
		h, c := sha256.New(), crc64.New(crc64.MakeTable(crc64.ISO))
		if _, err := io.Copy(io.MultiWriter(h, c), tr); err != nil {
			t.Fatal(err)
		}
		m[digest.NewDigest(digest.SHA256, h)] = c.Sum(nil)
	}
}

// crcFunc serves CRCs of l's content and counts the calls.
func (l *layer) crcFunc(calls *int) CRCFunc {
	return func(d digest.Digest, size int64) ([]byte, error) {
		*calls++
		if c, ok := l.crcs[d]; ok {
			return c, nil
		}
		return nil, errdefs.ErrNotFound
	}
}

// checkPrediction predicts next's tar-split from known and reports whether it is exact; a
// failure must be a clean error.
func checkPrediction(t *testing.T, next *layer, known ...*layer) (Stats, bool) {
	t.Helper()
	return checkPredictionWith(t, next, nil, known...)
}

// checkPredictionWith is checkPrediction with a given CRCFunc (nil: next's CRCs, counted).
func checkPredictionWith(t *testing.T, next *layer, crc CRCFunc, known ...*layer) (Stats, bool) {
	t.Helper()
	var ks []Known
	for _, k := range known {
		ks = append(ks, k.known())
	}
	calls := 0
	counted := crc == nil
	if counted {
		crc = next.crcFunc(&calls)
	}
	originals := make([][]byte, len(ks))
	for i, k := range ks {
		originals[i] = bytes.Clone(k.TarSplit)
	}
	js, st, err := PredictJSON(next.entries, ks, crc)
	for i, k := range ks {
		if !bytes.Equal(k.TarSplit, originals[i]) {
			t.Fatalf("PredictJSON changed known tar-split %d", i)
		}
	}
	if err != nil {
		if !errors.Is(err, errdefs.ErrUnsupported) && !errors.Is(err, errdefs.ErrNotFound) {
			t.Errorf("prediction failed with an unclassified error: %v", err)
		}
		t.Logf("no prediction: %v", err)
		return st, false
	}
	if counted && calls != st.NewCRCs {
		t.Errorf("CRCFunc called %d times, stats say %d", calls, st.NewCRCs)
	}
	checkEntries(t, js, next.entries, ks, crc)
	compressed, tsJSON, err := Predict(next.entries, next.toc.TarSplitDigest, ks, crc)
	exact := bytes.Equal(js, next.tarSplit)
	if exact != (err == nil) {
		t.Errorf("JSON exact=%v but Predict's digest check says %v", exact, err)
	}
	if err == nil {
		if !bytes.Equal(compressed, next.compressed) || !bytes.Equal(tsJSON, next.tarSplit) {
			t.Errorf("Predict passed its digest check with other bytes")
		}
	} else if !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Errorf("Predict: %v, want a digest mismatch", err)
	}
	if !exact {
		diffTarSplit(t, js, next.tarSplit)
	}
	return st, exact
}

// diffTarSplit logs the first line where two tar-splits differ.
func diffTarSplit(t *testing.T, got, want []byte) {
	t.Helper()
	g, w := bytes.Split(got, []byte("\n")), bytes.Split(want, []byte("\n"))
	for i := 0; i < len(g) || i < len(w); i++ {
		var gl, wl []byte
		if i < len(g) {
			gl = g[i]
		}
		if i < len(w) {
			wl = w[i]
		}
		if !bytes.Equal(gl, wl) {
			t.Logf("line %d differs:\n got %.400s\nwant %.400s", i, gl, wl)
			ge, gerr := tarstream.DecodeLine(gl)
			we, werr := tarstream.DecodeLine(wl)
			if gerr == nil && werr == nil {
				g, _ := ge.DecodedPayload()
				w, _ := we.DecodedPayload()
				t.Logf("payloads:\n got %q\nwant %q", g, w)
			}
			return
		}
	}
}

// readVectorFile reads a zstd:chunked vector for fuzz seeds, before a fuzz target has a T.
func readVectorFile(name string) ([]byte, error) { return testdata.Read("zstd-chunked", name) }

func jsonUnmarshal(b []byte, v any) error { return json.Unmarshal(b, v) }

// checkEntries checks that PredictEntries, from copies of the known tar-splits (it consumes
// them), predicts what PredictJSON did: the entries that decoding its JSON gives, which tarstream.WriteTarSplit
// writes back as that JSON.
func checkEntries(t *testing.T, js []byte, entries []layerfs.Entry, known []Known, crc CRCFunc) {
	t.Helper()
	copies := make([]Known, len(known))
	for i, k := range known {
		copies[i] = Known{Entries: k.Entries, TarSplit: bytes.Clone(k.TarSplit)}
	}
	predicted, _, err := PredictEntries(entries, copies, crc)
	if err != nil {
		t.Fatalf("PredictJSON succeeded, PredictEntries: %v", err)
	}
	want, err := tarstream.DecodeTarSplit(js, tarstream.MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	if len(predicted) != len(want) {
		t.Fatalf("PredictEntries gave %d entries, PredictJSON %d", len(predicted), len(want))
	}
	for i := range want {
		g, w := predicted[i], want[i]
		if g.Type != w.Type || g.GetName() != w.GetName() || g.Size != w.Size || !bytes.Equal(g.Payload, w.Payload) || g.Position != w.Position {
			t.Fatalf("entry %d: PredictEntries %+v, PredictJSON %+v", i, g, w)
		}
	}
	var out bytes.Buffer
	if err := tarstream.WriteTarSplit(&out, predicted); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), js) {
		diffTarSplit(t, out.Bytes(), js)
		t.Fatal("WriteTarSplit of the predicted entries differs from PredictJSON")
	}
	checkStreamed(t, predicted, entries, known, crc)
}

// checkStreamed checks that PredictEntries from the known tar-splits as streams (read in odd
// pieces, so lines straddle reads) predicts what it does from them whole.
func checkStreamed(t *testing.T, whole []storage.Entry, entries []layerfs.Entry, known []Known, crc CRCFunc) {
	t.Helper()
	streams := make([]Known, len(known))
	for i, k := range known {
		streams[i] = Known{Entries: k.Entries, Stream: &pieceReader{b: bytes.Clone(k.TarSplit)}}
	}
	streamed, _, err := PredictEntries(entries, streams, crc)
	if err != nil {
		t.Fatalf("PredictEntries from whole tar-splits succeeded, from streams: %v", err)
	}
	if len(streamed) != len(whole) {
		t.Fatalf("PredictEntries from streams gave %d entries, from whole tar-splits %d", len(streamed), len(whole))
	}
	for i := range whole {
		g, w := streamed[i], whole[i]
		if g.Type != w.Type || g.GetName() != w.GetName() || g.Size != w.Size || !bytes.Equal(g.Payload, w.Payload) || g.Position != w.Position {
			t.Fatalf("entry %d: from streams %+v, from whole tar-splits %+v", i, g, w)
		}
	}
}

// pieceReader reads b in pieces of 1 to 97 bytes, and never hands out b itself.
type pieceReader struct {
	b   []byte
	off int
	n   int
}

func (r *pieceReader) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	r.n = r.n%97 + 1
	n := copy(p[:min(len(p), r.n)], r.b[r.off:])
	r.off += n
	return n, nil
}
