package chunked

import (
	"archive/tar"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/layerfs"
)

// A tar import builds the model from headers and derives its TOC from the model: the TOC must be
// byte for byte what EntryFromHeader and ChunkEntries give (what the store recorded before), and
// decoding it must give the model back.
func TestEncodeTOCMatchesHeaderRows(t *testing.T) {
	mtime := time.Date(2024, 5, 1, 12, 0, 0, 500, time.UTC)
	far := time.Date(12000, 1, 1, 0, 0, 0, 0, time.UTC) // clamped into the TOC's years
	d1, d2, d3 := digest.FromString("file"), digest.FromString("c0"), digest.FromString("c1")
	files := []struct {
		hdr    tar.Header
		digest digest.Digest
		chunks []Chunk // as the chunker cuts them
	}{
		{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "d/", Mode: 0o755, ModTime: mtime,
			PAXRecords: map[string]string{PAXXattrPrefix + "user.a": "\x00v", "comment": "no xattr"}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/one", Mode: 0o644, Size: 3000, Uid: 7, Gid: 8, ModTime: far, AccessTime: mtime},
			digest: d1, chunks: []Chunk{{Size: 3000, Digest: d1, Zeros: true}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "d/two", Mode: 0o600, Size: 10, ModTime: mtime},
			digest: d1, chunks: []Chunk{{Size: 4, Digest: d2}, {Offset: 4, Size: 6, Digest: d3, Zeros: true}}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "empty"}},
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "s", Linkname: "d/one"}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "h", Linkname: "d/two"}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "c", Devmajor: 1, Devminor: 3}},
	}
	var want []Entry
	var model []layerfs.Entry
	for _, f := range files {
		row, err := EntryFromHeader(&f.hdr)
		if err != nil {
			t.Fatal(err)
		}
		e, err := HeaderEntry(&f.hdr)
		if err != nil {
			t.Fatal(err)
		}
		if f.digest == "" {
			want, model = append(want, row), append(model, e)
			continue
		}
		want = append(want, ChunkEntries(row, f.digest, f.chunks, nil)...)
		e.Digest, e.Chunks = f.digest, f.chunks
		if len(f.chunks) < 2 { // what store/layer's import attaches to a file of one chunk
			e.Chunks = []layerfs.Chunk{{Size: e.Size, Digest: e.Digest}}
		}
		model = append(model, e)
	}
	got := EncodeTOC(model)
	gb, err := json.Marshal(got)
	if err != nil {
		t.Fatal(err)
	}
	wb, _ := json.Marshal(&TOC{Version: 1, Entries: want})
	if string(gb) != string(wb) {
		t.Fatalf("TOC from the model:\n%s\nfrom the headers:\n%s", gb, wb)
	}
	back, err := DecodeEntries(got)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, model) {
		t.Fatalf("decoded back:\n%+v\nmodel:\n%+v", back, model)
	}
}
