package chunked

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"testing"
)

func benchInput(b *testing.B) []byte {
	return readTestdata(b, "real.tar")
}

func BenchmarkConvert(b *testing.B) {
	in := benchInput(b)
	for _, conc := range []int{1, 2} {
		b.Run(map[int]string{1: "workers=1", 2: "workers=2"}[conc], func(b *testing.B) {
			b.SetBytes(int64(len(in)))
			for b.Loop() {
				if _, err := Convert(context.Background(), bytes.NewReader(in), io.Discard, WithConcurrency(conc)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkChunkWriter(b *testing.B) {
	data := make([]byte, 16<<20)
	rand.Read(data)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		w := NewChunkWriter(nil, nil)
		w.Write(data)
		w.Close()
	}
}

func BenchmarkOpen(b *testing.B) {
	blob := readTestdata(b, "real.zstd-chunked")
	b.SetBytes(int64(len(blob)))
	for b.Loop() {
		if _, _, err := Open(bytes.NewReader(blob), int64(len(blob)), nil); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkRebuildTar(b *testing.B) {
	blob := readTestdata(b, "real.zstd-chunked")
	l, _, err := Open(bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(readTestdata(b, "real.tar"))))
	for b.Loop() {
		if err := l.RebuildTar(bytes.NewReader(blob), io.Discard); err != nil {
			b.Fatal(err)
		}
	}
}
