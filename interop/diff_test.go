// Package interop checks kura's zstd:chunked code against the reference implementation,
// go.podman.io/storage (containers/storage), kept out of the product module.
package interop

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/opencontainers/go-digest"
	"go.podman.io/storage/pkg/chunked/compressor"
	"go.podman.io/storage/pkg/chunked/toc"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/tarstream"
)

// reference converts with the containers/storage compressor.
func reference(t testing.TB, in []byte, level int) ([]byte, map[string]string) {
	t.Helper()
	var out bytes.Buffer
	ann := map[string]string{}
	w, err := compressor.ZstdCompressor(&out, ann, &level)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(in); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), ann
}

func ours(t testing.TB, in []byte, opts ...chunked.Option) ([]byte, chunked.Descriptor) {
	t.Helper()
	var out bytes.Buffer
	desc, err := chunked.Convert(t.Context(), bytes.NewReader(in), &out, opts...)
	if err != nil {
		t.Fatal(err)
	}
	return out.Bytes(), desc
}

func metadata(t testing.TB, blob []byte, ann map[string]string) (*chunked.Layer, []byte) {
	t.Helper()
	l, loc, err := chunked.Open(bytes.NewReader(blob), int64(len(blob)), ann)
	if err != nil {
		t.Fatal(err)
	}
	d, _ := zstd.NewReader(nil)
	defer d.Close()
	tocJSON, err := d.DecodeAll(blob[loc.TOC.Offset:loc.TOC.End()], nil)
	if err != nil {
		t.Fatal(err)
	}
	return l, tocJSON
}

func TestDifferentialTOC(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		in := genTar(t, seed)
		for _, level := range []int{3, 10} {
			refBlob, refAnn := reference(t, in, level)
			blob, desc := ours(t, in, chunked.WithLevel(level))

			refLayer, refTOC := metadata(t, refBlob, refAnn)
			layer, tocJSON := metadata(t, blob, desc.Annotations)
			if !bytes.Equal(tocJSON, refTOC) {
				for i := range min(len(layer.TOC.Entries), len(refLayer.TOC.Entries)) {
					a, _ := json.Marshal(layer.TOC.Entries[i])
					b, _ := json.Marshal(refLayer.TOC.Entries[i])
					if !bytes.Equal(a, b) {
						t.Fatalf("seed %d level %d: entry %d\n ours %s\n  ref %s", seed, level, i, a, b)
					}
				}
				t.Fatalf("seed %d level %d: TOCs differ (%d vs %d entries)", seed, level, len(layer.TOC.Entries), len(refLayer.TOC.Entries))
			}
			if !bytes.Equal(layer.TarSplit, refLayer.TarSplit) {
				t.Fatalf("seed %d level %d: tar-splits differ", seed, level)
			}
			for k, v := range refAnn {
				if desc.Annotations[k] != v {
					t.Errorf("annotation %s: ours %q, reference %q", k, desc.Annotations[k], v)
				}
			}
			if !bytes.Equal(blob, refBlob) {
				t.Errorf("seed %d level %d: blobs differ (%d vs %d bytes)", seed, level, len(blob), len(refBlob))
			}
			// The reference's toc package reads our annotations.
			d, err := toc.GetTOCDigest(desc.Annotations)
			if err != nil || d == nil || *d != digest.Digest(desc.Annotations[chunked.AnnotationTOCDigest]) {
				t.Errorf("reference GetTOCDigest(ours) = %v, %v", d, err)
			}
			// Our rebuild gives the input tar back.
			var rebuilt bytes.Buffer
			if err := layer.RebuildTar(bytes.NewReader(blob), &rebuilt); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(rebuilt.Bytes(), in) {
				t.Fatalf("rebuilt tar differs from input")
			}
		}
	}
}

// The building blocks the store uses give the reference's chunks and tar-split.
func TestDifferentialBuildingBlocks(t *testing.T) {
	in := genTar(t, 7)
	refBlob, refAnn := reference(t, in, 10)
	refLayer, _ := metadata(t, refBlob, refAnn)

	var tarSplit bytes.Buffer
	var entries []chunked.Entry
	err := tarstream.Walk(bytes.NewReader(in), &tarSplit, func(hdr *tarHeader, payload io.Reader) error {
		e, err := chunked.EntryFromHeader(hdr)
		if err != nil {
			return err
		}
		var chunks []chunked.Chunk
		h := digest.SHA256.Digester()
		cw := chunked.NewChunkWriter(h.Hash(), func(c chunked.Chunk) error { chunks = append(chunks, c); return nil })
		n, err := io.Copy(cw, payload)
		if err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		var fd digest.Digest
		if n > 0 {
			fd = h.Digest()
		}
		entries = append(entries, chunked.ChunkEntries(e, fd, chunks, nil)...)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(tarSplit.Bytes(), refLayer.TarSplit) {
		t.Fatal("tarstream.Walk's tar-split differs from the reference")
	}
	if len(entries) != len(refLayer.TOC.Entries) {
		t.Fatalf("%d entries, reference %d", len(entries), len(refLayer.TOC.Entries))
	}
	for i, e := range entries {
		ref := refLayer.TOC.Entries[i]
		ref.Offset, ref.EndOffset = 0, 0
		a, _ := json.Marshal(e)
		b, _ := json.Marshal(ref)
		if !bytes.Equal(a, b) {
			t.Fatalf("entry %d\n ours %s\n  ref %s", i, a, b)
		}
	}
}

// Output does not depend on the parallelism.
func TestDeterministicAcrossConcurrency(t *testing.T) {
	in := genTar(t, 11)
	one, _ := ours(t, in, chunked.WithConcurrency(1))
	for _, n := range []int{2, 3, 8} {
		many, _ := ours(t, in, chunked.WithConcurrency(n))
		if !bytes.Equal(one, many) {
			t.Fatalf("concurrency %d output differs from concurrency 1", n)
		}
	}
}

// The zstd CLI decompresses our blob of the generated tar back to the input.
func TestZstdCLIOnGeneratedTar(t *testing.T) {
	zstdBin, err := exec.LookPath("zstd")
	if err != nil {
		testkit.Skip(t, "zstd CLI not installed")
	}
	in := genTar(t, 5)
	blob, _ := ours(t, in)
	cmd := exec.Command(zstdBin, "-d", "-c")
	cmd.Stdin = bytes.NewReader(blob)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out, in) {
		t.Fatalf("zstd -d gives %d bytes, input has %d", len(out), len(in))
	}
}
