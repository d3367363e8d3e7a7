package chunked

import (
	"bytes"
	"encoding/base64"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/digests"
	"github.com/kura-oci/kura/layerfs"
)

// The model of a real layer gives each file the digest and chunks the parser found for it.
func TestDecodeEntriesMatchesParse(t *testing.T) {
	blob := readTestdata(t, "real.zstd-chunked")
	l, _, err := Open(bytes.NewReader(blob), int64(len(blob)), nil)
	if err != nil {
		t.Fatal(err)
	}
	entries, err := DecodeEntries(l.TOC)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]*File{}
	for i := range l.Files {
		files[l.Files[i].Entry.Name] = &l.Files[i]
	}
	n := 0
	for i := range entries {
		e := &entries[i]
		f, ok := files[e.Name]
		if ok != e.HasContent() {
			t.Fatalf("%q: a file with content in the model %v, in the parse %v", e.Name, e.HasContent(), ok)
		}
		if !ok {
			if e.Digest != "" || e.Chunks != nil {
				t.Fatalf("%q: digest %q and %d chunks without content", e.Name, e.Digest, len(e.Chunks))
			}
			continue
		}
		n++
		// The parse's entry is the model's: same digest, same chunks, each with its frames.
		if f.Entry != &l.Entries[i] || len(f.Frames) != len(e.Chunks) {
			t.Fatalf("%q: parse points at another entry, or has %d frames for %d chunks", e.Name, len(f.Frames), len(e.Chunks))
		}
		if !reflect.DeepEqual(*f.Entry, *e) {
			t.Fatalf("%q: parse decodes %+v, DecodeEntries %+v", e.Name, *f.Entry, *e)
		}
		for k, c := range e.Chunks {
			if fc := f.Chunk(k); fc.Chunk != c || fc.Range != f.Frames[k] {
				t.Fatalf("%q chunk %d: %+v, parse says %+v", e.Name, k, c, fc)
			}
		}
	}
	if n != len(l.Files) || n == 0 {
		t.Fatalf("%d files with content in the model, %d in the parse", n, len(l.Files))
	}
}

func TestDecodeEntries(t *testing.T) {
	d1, d2 := digest.FromString("a"), digest.FromString("b")
	toc := &TOC{Version: 1, Entries: []Entry{
		{Type: TypeDir, Name: "d/", Xattrs: map[string]string{"user.a": base64.StdEncoding.EncodeToString([]byte("\x00v"))}},
		{Type: TypeReg, Name: "d/f", Size: 10, Digest: d1.String(), ChunkSize: 4, ChunkDigest: d2.String()},
		{Type: TypeChunk, Name: "d/f", ChunkOffset: 4, ChunkSize: 6, ChunkDigest: d1.String(), ChunkType: ChunkTypeZeros},
		{Type: TypeReg, Name: "e", Size: 3, Digest: d2.String()},
		{Type: TypeReg, Name: "empty"},
		{Type: TypeLink, Name: "l", Linkname: "e"},
	}}
	got, err := DecodeEntries(toc)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 5 {
		t.Fatalf("%d entries, want 5 (chunk rows attached to their file)", len(got))
	}
	if got[0].Type != layerfs.TypeDir || string(got[0].Xattrs["user.a"]) != "\x00v" {
		t.Fatalf("dir: %+v", got[0])
	}
	want := []layerfs.Chunk{{Size: 4, Digest: d2}, {Offset: 4, Size: 6, Digest: d1, Zeros: true}}
	if f := got[1]; f.Type != layerfs.TypeReg || f.Digest != d1 || fmt.Sprint(f.Chunks) != fmt.Sprint(want) {
		t.Fatalf("chunked file: %+v", f)
	}
	if f := got[2]; fmt.Sprint(f.Chunks) != fmt.Sprint([]layerfs.Chunk{{Size: 3, Digest: d2}}) {
		t.Fatalf("single-chunk file: %+v", f)
	}
	if got[3].Chunks != nil || got[3].Digest != "" || got[4].Type != layerfs.TypeLink || got[4].Linkname != "e" {
		t.Fatalf("empty file or link: %+v %+v", got[3], got[4])
	}
	if got[4].Type.String() != TypeLink {
		t.Fatalf("type name %q, want %q", got[4].Type, TypeLink)
	}
}

func TestDecodeEntriesRefuses(t *testing.T) {
	d := digest.FromString("a").String()
	for name, rows := range map[string][]Entry{
		"chunk first":     {{Type: TypeChunk, Name: "f", ChunkSize: 1, ChunkDigest: d}},
		"unknown type":    {{Type: "socket", Name: "s"}},
		"bad digest":      {{Type: TypeReg, Name: "f", Size: 1, Digest: "sha256:xyz"}},
		"bad xattr":       {{Type: TypeDir, Name: "d", Xattrs: map[string]string{"user.a": "!!"}}},
		"chunk of other":  {{Type: TypeReg, Name: "f", Size: 2, Digest: d, ChunkSize: 1, ChunkDigest: d}, {Type: TypeChunk, Name: "g", ChunkOffset: 1, ChunkSize: 1, ChunkDigest: d}},
		"gap":             {{Type: TypeReg, Name: "f", Size: 3, Digest: d, ChunkSize: 1, ChunkDigest: d}, {Type: TypeChunk, Name: "f", ChunkOffset: 2, ChunkSize: 1, ChunkDigest: d}},
		"short":           {{Type: TypeReg, Name: "f", Size: 3, Digest: d, ChunkSize: 1, ChunkDigest: d}, {Type: TypeChunk, Name: "f", ChunkOffset: 1, ChunkSize: 1, ChunkDigest: d}},
		"chunk type":      {{Type: TypeReg, Name: "f", Size: 2, Digest: d, ChunkSize: 1, ChunkDigest: d}, {Type: TypeChunk, Name: "f", ChunkOffset: 1, ChunkSize: 1, ChunkDigest: d, ChunkType: "x"}},
		"empty w/ chunks": {{Type: TypeReg, Name: "f", Digest: d}, {Type: TypeChunk, Name: "f", ChunkSize: 1, ChunkDigest: d}},
	} {
		if _, err := DecodeEntries(&TOC{Version: 1, Entries: rows}); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", name, err)
		}
	}
}

// bigTOC is a TOC of n entries shaped like a large image layer: directories with an xattr every
// so often, small files, and every tenth file cut into four chunks.
func bigTOC(n int) *TOC {
	toc := &TOC{Version: 1}
	for i := range n {
		name := fmt.Sprintf("usr/lib/pkg%d/file%d", i/100, i)
		d := digest.FromString(name).String()
		switch {
		case i%50 == 0:
			toc.Entries = append(toc.Entries, Entry{Type: TypeDir, Name: name, Mode: 0o755,
				Xattrs: map[string]string{"security.capability": base64.StdEncoding.EncodeToString([]byte(name))}})
		case i%10 == 0:
			toc.Entries = append(toc.Entries, Entry{Type: TypeReg, Name: name, Size: 4 << 20, Digest: d, ChunkSize: 1 << 20, ChunkDigest: d})
			for k := int64(1); k < 4; k++ {
				toc.Entries = append(toc.Entries, Entry{Type: TypeChunk, Name: name, ChunkOffset: k << 20, ChunkSize: 1 << 20, ChunkDigest: d})
			}
		default:
			toc.Entries = append(toc.Entries, Entry{Type: TypeReg, Name: name, Size: 1000, Digest: d})
		}
	}
	return toc
}

// BenchmarkDecodeEntries decodes a large TOC into the model, as every read of a stored layer
// does once; BenchmarkTOCLoop is what one consumer's own loop did before, each time: skip
// chunk rows, parse digests, decode xattrs, list the objects (as TOCObjects did).
func BenchmarkDecodeEntries(b *testing.B) {
	toc := bigTOC(100_000)
	b.ReportAllocs()
	for b.Loop() {
		entries, err := DecodeEntries(toc)
		if err != nil {
			b.Fatal(err)
		}
		_ = layerfs.Objects(entries)
	}
}

func BenchmarkTOCLoop(b *testing.B) {
	toc := bigTOC(100_000)
	b.ReportAllocs()
	for b.Loop() {
		seen := map[digest.Digest]bool{}
		for i := range toc.Entries {
			e := &toc.Entries[i]
			if e.Type == TypeChunk {
				continue
			}
			for _, v := range e.Xattrs {
				if _, err := base64.StdEncoding.DecodeString(v); err != nil {
					b.Fatal(err)
				}
			}
			if e.Type == TypeReg && e.Size > 0 {
				d, err := digests.ParseSHA256(e.Digest)
				if err != nil {
					b.Fatal(err)
				}
				seen[d] = true
			}
		}
		out := make([]digest.Digest, 0, len(seen))
		for d := range seen {
			out = append(out, d)
		}
		slices.Sort(out)
	}
}
