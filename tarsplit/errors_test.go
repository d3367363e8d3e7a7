package tarsplit

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
)

// Failures are clean and classified, so that a puller can tell "fetch the real one" from bugs.
func TestPredictErrors(t *testing.T) {
	mixed := convert(t, readVector(t, "mixed.tar"))
	real := convert(t, readVector(t, "real.tar"))

	// A stored tar-split that does not belong to its TOC.
	_, _, err := PredictJSON(real.entries, []Known{{Entries: mixed.entries, TarSplit: real.tarSplit}}, nil)
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("mismatched known layer: %v, want ErrInvalid", err)
	}
	_, _, err = PredictJSON(real.entries, []Known{{Entries: nil, TarSplit: real.tarSplit}}, nil)
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("known layer without TOC: %v, want ErrInvalid", err)
	}
	// Content no known layer has, and no CRCFunc.
	_, _, err = PredictJSON(real.entries, []Known{mixed.known()}, nil)
	if !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("unknown content without CRCFunc: %v, want ErrNotFound", err)
	}
	// A CRCFunc that fails, or answers nonsense.
	boom := errors.New("boom")
	_, _, err = PredictJSON(real.entries, nil, func(digest.Digest, int64) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Errorf("failing CRCFunc: %v", err)
	}
	_, _, err = PredictJSON(real.entries, nil, func(digest.Digest, int64) ([]byte, error) { return []byte{1}, nil })
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("short CRC: %v, want ErrInvalid", err)
	}
	// A TOC without a tar-split digest cannot be checked.
	if _, _, err := Predict(real.entries, "", []Known{real.known()}, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("no tarSplitDigest: %v, want ErrInvalid", err)
	}
	// Unknown entry types and duplicate names.
	odd := []layerfs.Entry{{Type: layerfs.Type(0), Name: "x"}} // no type tar knows ("whiteout")
	if _, _, err := PredictJSON(odd, nil, nil); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Errorf("unknown type: %v, want ErrUnsupported", err)
	}
	dup := []layerfs.Entry{{Type: layerfs.TypeDir, Name: "a/"}, {Type: layerfs.TypeDir, Name: "a"}}
	if _, _, err := PredictJSON(dup, nil, nil); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("duplicate paths: %v, want ErrInvalid", err)
	}
}

// A layer written at another zstd level has the same tar-split JSON but other compressed bytes:
// PredictJSON is exact, Predict reports the mismatch.
func TestPredictOtherLevel(t *testing.T) {
	in := readVector(t, "mixed.tar")
	var blob bytes.Buffer
	if _, err := chunked.Convert(context.Background(), bytes.NewReader(in), &blob, chunked.WithLevel(3)); err != nil {
		t.Fatal(err)
	}
	b := blob.Bytes()
	loc, err := chunked.LocateFromFooter(b[len(b)-chunked.FooterFetchSize:], int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	l, err := chunked.Parse(loc, b[loc.TOC.Offset:loc.TOC.End()], b[loc.TarSplit.Offset:loc.TarSplit.End()])
	if err != nil {
		t.Fatal(err)
	}
	js, _, err := PredictJSON(l.Entries, []Known{{Entries: l.Entries, TarSplit: l.TarSplit}}, nil)
	if err != nil || !bytes.Equal(js, l.TarSplit) {
		t.Fatalf("PredictJSON: exact=%v, %v", bytes.Equal(js, l.TarSplit), err)
	}
	if _, _, err := Predict(l.Entries, l.TOC.TarSplitDigest, []Known{{Entries: l.Entries, TarSplit: l.TarSplit}}, nil); !errors.Is(err, errdefs.ErrDigestMismatch) {
		t.Errorf("Predict: %v, want ErrDigestMismatch", err)
	}
}

// An empty archive and one of only directories.
func TestPredictEmpty(t *testing.T) {
	empty := convert(t, goTar(t, nil, tar.FormatUnknown))
	if _, ok := checkPrediction(t, empty); !ok {
		t.Error("empty archive not predicted from nothing")
	}
	if _, ok := checkPrediction(t, empty, empty); !ok {
		t.Error("empty archive not predicted from itself")
	}
	dirs := convert(t, goTar(t, []file{{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "a/", Mode: 0o755, ModTime: base}}}, tar.FormatUnknown))
	if _, ok := checkPrediction(t, dirs, empty); !ok {
		t.Error("directory-only archive not predicted from the empty one")
	}
}

// OpenCRC computes what tar-split records, and refuses content of the wrong size.
func TestOpenCRC(t *testing.T) {
	l := convert(t, readVector(t, "real.tar"))
	contents := map[digest.Digest][]byte{}
	tr := tar.NewReader(bytes.NewReader(readVector(t, "real.tar")))
	for {
		hdr, err := tr.Next()
		if err != nil {
			break
		}
		b := new(bytes.Buffer)
		if _, err := b.ReadFrom(tr); err != nil {
			t.Fatal(err)
		}
		if hdr.Typeflag == tar.TypeReg && hdr.Size > 0 {
			contents[digest.FromBytes(b.Bytes())] = b.Bytes()
		}
	}
	open := func(d digest.Digest) (io.ReadCloser, error) {
		b, ok := contents[d]
		if !ok {
			return nil, errdefs.ErrNotFound
		}
		return io.NopCloser(bytes.NewReader(b)), nil
	}
	if _, ok := checkPredictionWith(t, l, OpenCRC(open)); !ok {
		t.Error("prediction from nothing with OpenCRC not exact")
	}
	for d, b := range contents {
		if _, err := OpenCRC(open)(d, int64(len(b))+1); !errors.Is(err, errdefs.ErrDigestMismatch) {
			t.Errorf("short content: %v, want ErrDigestMismatch", err)
		}
		break
	}
}
