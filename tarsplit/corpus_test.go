package tarsplit

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/source"
)

// The bench corpus check: KURA_TARSPLIT_CORPUS names a directory holding cN.zst (blobs written by
// `kura layer convert`) and, optionally, cN.tar (the input tars, for the CRCs of new content).
// It predicts each version's tar-split from the one before and reports hit and time. Without it
// the corpus is the two zstd:chunked vectors' tars, converted here: mixed, real, mixed again.
func TestCorpus(t *testing.T) {
	dir := os.Getenv("KURA_TARSPLIT_CORPUS")
	if dir == "" {
		dir = vectorCorpus(t)
	}
	var prev *layer
	for i := 0; ; i++ {
		name := filepath.Join(dir, "c"+string(rune('0'+i)))
		l, err := readBlobMetadata(name + ".zst")
		if os.IsNotExist(err) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if tb, err := os.Open(name + ".tar"); err == nil {
			b, err := io.ReadAll(tb)
			tb.Close()
			if err != nil {
				t.Fatal(err)
			}
			l.crcs = contentCRCs(t, b)
		}
		if prev != nil {
			calls := 0
			start := time.Now()
			js, st, err := PredictJSON(l.entries, []Known{prev.known()}, l.crcFunc(&calls))
			tJSON := time.Since(start)
			if err != nil {
				t.Errorf("c%d from c%d: %v", i, i-1, err)
				prev = l
				continue
			}
			start = time.Now()
			z, err := Compress(js)
			tZ := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			start = time.Now()
			_, _, perr := Predict(l.entries, l.toc.TarSplitDigest, []Known{prev.known()}, l.crcFunc(&calls))
			tAll := time.Since(start)
			t.Logf("c%d from c%d: exact JSON %v, compressed %v (%d vs %d bytes), Predict err=%v; %+v; JSON %v, compress %v, Predict %v; tar-split %d B",
				i, i-1, bytes.Equal(js, l.tarSplit), bytes.Equal(z, l.compressed), len(z), len(l.compressed), perr, st, tJSON, tZ, tAll, len(js))
			if !bytes.Equal(js, l.tarSplit) {
				diffTarSplit(t, js, l.tarSplit)
				t.Errorf("c%d not predicted exactly", i)
			}
		}
		prev = l
	}
}

// vectorCorpus writes c0..c2 (.tar and .zst, as `kura layer convert` writes them) from the
// vectors' tars into a temporary directory.
func vectorCorpus(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	for i, name := range []string{"mixed.tar", "real.tar", "mixed.tar"} {
		in := readVector(t, name)
		base := filepath.Join(dir, "c"+string(rune('0'+i)))
		if err := os.WriteFile(base+".tar", in, 0o644); err != nil {
			t.Fatal(err)
		}
		var blob bytes.Buffer
		if _, err := chunked.Convert(context.Background(), bytes.NewReader(in), &blob); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(base+".zst", blob.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// readBlobMetadata reads a zstd:chunked blob's TOC and tar-split as a puller would.
func readBlobMetadata(path string) (*layer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	tail := make([]byte, chunked.FooterFetchSize)
	if _, err := f.ReadAt(tail, fi.Size()-int64(len(tail))); err != nil {
		return nil, err
	}
	loc, err := chunked.LocateFromFooter(tail, fi.Size())
	if err != nil {
		return nil, err
	}
	read := func(r source.Range) ([]byte, error) {
		b := make([]byte, r.Length)
		_, err := f.ReadAt(b, r.Offset)
		return b, err
	}
	tocZ, err := read(loc.TOC)
	if err != nil {
		return nil, err
	}
	tsZ, err := read(loc.TarSplit)
	if err != nil {
		return nil, err
	}
	l, err := chunked.Parse(loc, tocZ, tsZ)
	if err != nil {
		return nil, err
	}
	return &layer{toc: l.TOC, entries: l.Entries, tarSplit: l.TarSplit, compressed: tsZ, crcs: map[digest.Digest][]byte{}}, nil
}

// BenchmarkPredictJSON predicts c1 from c0 of KURA_TARSPLIT_CORPUS (or of the vectors).
func BenchmarkPredictJSON(b *testing.B) {
	dir := os.Getenv("KURA_TARSPLIT_CORPUS")
	if dir == "" {
		dir = vectorCorpus(b)
	}
	c0, err := readBlobMetadata(filepath.Join(dir, "c0.zst"))
	if err != nil {
		b.Fatal(err)
	}
	c1, err := readBlobMetadata(filepath.Join(dir, "c1.zst"))
	if err != nil {
		b.Fatal(err)
	}
	// New content gets a made-up CRC: the timing is what matters here.
	crc := func(digest.Digest, int64) ([]byte, error) { return make([]byte, 8), nil }
	b.ResetTimer()
	for range b.N {
		if _, _, err := PredictJSON(c1.entries, []Known{c0.known()}, crc); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkCompress compresses c1's tar-split of KURA_TARSPLIT_CORPUS (or of the vectors) as the
// writer does.
func BenchmarkCompress(b *testing.B) {
	dir := os.Getenv("KURA_TARSPLIT_CORPUS")
	if dir == "" {
		dir = vectorCorpus(b)
	}
	c1, err := readBlobMetadata(filepath.Join(dir, "c1.zst"))
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(c1.tarSplit)))
	b.ResetTimer()
	for range b.N {
		if _, err := Compress(c1.tarSplit); err != nil {
			b.Fatal(err)
		}
	}
}
