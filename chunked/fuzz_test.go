package chunked

import (
	"bytes"
	"io"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/tarstream"
)

func blobTails(t testing.TB) [][]byte {
	var tails [][]byte
	for _, name := range []string{"mixed.zstd-chunked", "real.zstd-chunked",
		filepath.Join("skopeo-1.9", "oci-layout", "blobs", "sha256", "1885488406a47daefb7e7c6be0e987ef3bcdc87fa9c318b639e6c69532b34e52")} {
		b := readTestdata(t, name)
		tails = append(tails, b[len(b)-FooterFetchSize:])
	}
	return tails
}

func FuzzFooter(f *testing.F) {
	for _, tail := range blobTails(f) {
		f.Add(tail, int64(700000))
	}
	f.Fuzz(func(t *testing.T, tail []byte, size int64) {
		loc, err := LocateFromFooter(tail, size)
		if err != nil {
			return
		}
		// Whatever is accepted lies inside the blob and within bounds.
		for _, r := range loc.Ranges() {
			if r.Offset < 0 || r.Length <= 0 || r.End() > size || r.Length > defaultReadOptions().maxMetadata {
				t.Fatalf("accepted range %+v for a %d-byte blob", r, size)
			}
		}
	})
}

func FuzzTOC(f *testing.F) {
	for _, name := range []string{"mixed.toc.json", "real.toc.json"} {
		f.Add(readTestdata(f, name), int64(700000))
	}
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"a","size":3,"digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","offset":1,"endOffset":5}]}`), int64(100))
	// Bombs: a zeros chunk declaring 1 GiB in 4 bytes of frame; empty entries by the thousand.
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"z","size":1073741824,"digest":"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad","offset":1,"endOffset":5,"chunkType":"zeros"}]}`), int64(100))
	f.Add(repeatEntries(`{}`, 5000), int64(100))
	f.Fuzz(func(t *testing.T, b []byte, dataEnd int64) {
		toc, err := ParseTOC(b)
		if err != nil {
			return
		}
		l := &Layer{TOC: toc, DataEnd: dataEnd}
		if err := l.index(); err != nil {
			return
		}
		for _, file := range l.Files {
			if file.Range.Offset < 0 || file.Range.End() > dataEnd || len(file.Entry.Chunks) == 0 || len(file.Frames) != len(file.Entry.Chunks) {
				t.Fatalf("accepted file %+v with data end %d", file.Range, dataEnd)
			}
			var sum int64
			for k := range file.Entry.Chunks {
				c := file.Chunk(k)
				if c.Offset != sum || c.Range.Offset < file.Range.Offset || c.Range.End() > file.Range.End() {
					t.Fatalf("accepted chunk %+v of %+v", c, file.Range)
				}
				if c.Size > c.Range.Length*maxFrameExpansion {
					t.Fatalf("accepted a chunk of %d bytes in %d bytes of frames", c.Size, c.Range.Length)
				}
				sum += c.Size
			}
			if sum != file.Entry.Size {
				t.Fatalf("chunks cover %d of %d bytes", sum, file.Entry.Size)
			}
		}
	})
}

func FuzzTarSplit(f *testing.F) {
	toc, err := ParseTOC(readTestdata(f, "mixed.toc.json"))
	if err != nil {
		f.Fatal(err)
	}
	entries, err := DecodeEntries(toc)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(readTestdata(f, "mixed.tar-split.json"))
	f.Add(readTestdata(f, "real.tar-split.json"))
	f.Add([]byte(`{"type":2,"payload":"AAAA","position":0}` + "\n" + `{"type":1,"name":"x","size":5,"payload":"AAAAAAAAAAA=","position":1}`))
	f.Add([]byte(`{"type":2,"payload":"AAAA","position":0}` + strings.Repeat("\n \n", 5000))) // blank lines
	f.Fuzz(func(t *testing.T, ts []byte) {
		_ = CheckTarSplit(entries, ts)
		// Rebuilding never trusts sizes beyond what open delivers.
		_ = tarstream.Rebuild(ts, func(name string, size int64) (io.ReadCloser, error) {
			return io.NopCloser(io.LimitReader(zeroReader{}, min(size, 1<<20))), nil
		}, io.Discard)
	})
}

type zeroReader struct{}

func (zeroReader) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// Chunking does not depend on how content is split into writes.
func FuzzChunkWriterSplits(f *testing.F) {
	f.Add([]byte("hello world"), uint16(3), byte(0))
	f.Add(bytes.Repeat([]byte{0}, 3000), uint16(1000), byte(0))
	f.Add(readTestdata(f, "real.tar")[:200000], uint16(4096), byte(7))
	f.Fuzz(func(t *testing.T, data []byte, step uint16, salt byte) {
		// Make long zero runs likely.
		if salt%2 == 1 {
			data = append(append(bytes.Clone(data), make([]byte, 1024+int(salt))...), data...)
		}
		cut := func(step int) ([]Chunk, []byte) {
			var chunks []Chunk
			var out bytes.Buffer
			w := NewChunkWriter(&out, func(c Chunk) error { chunks = append(chunks, c); return nil })
			for p := data; len(p) > 0; {
				n := min(step, len(p))
				if _, err := w.Write(p[:n]); err != nil {
					t.Fatal(err)
				}
				p = p[n:]
			}
			if err := w.Close(); err != nil {
				t.Fatal(err)
			}
			return chunks, out.Bytes()
		}
		whole, out := cut(len(data) + 1)
		if !bytes.Equal(out, data) {
			t.Fatal("ChunkWriter altered the content")
		}
		split, _ := cut(int(step)%4096 + 1)
		if len(whole) != len(split) {
			t.Fatalf("%d chunks in one write, %d in steps of %d", len(whole), len(split), step)
		}
		var off int64
		for i := range whole {
			if whole[i] != split[i] || whole[i].Offset != off {
				t.Fatalf("chunk %d: %+v vs %+v", i, whole[i], split[i])
			}
			off += whole[i].Size
		}
		if off != int64(len(data)) {
			t.Fatalf("chunks cover %d of %d bytes", off, len(data))
		}
	})
}
