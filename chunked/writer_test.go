package chunked

import (
	"bytes"
	"context"
	"encoding/json"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// decodeSkippable returns the decompressed payload of the skippable frame at [off, off+n).
func decompressRange(t testing.TB, blob []byte, off, n int64) []byte {
	t.Helper()
	d, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	out, err := d.DecodeAll(blob[off:off+n], nil)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func TestConvertConformance(t *testing.T) {
	for _, name := range []string{"mixed", "real"} {
		t.Run(name, func(t *testing.T) {
			in := readTestdata(t, name+".tar")
			var out bytes.Buffer
			desc, err := Convert(context.Background(), bytes.NewReader(in), &out)
			if err != nil {
				t.Fatal(err)
			}
			f, _, err := parseFooter(out.Bytes()[out.Len()-FooterFetchSize:])
			if err != nil {
				t.Fatal(err)
			}
			toc := decompressRange(t, out.Bytes(), int64(f.tocOffset), int64(f.tocLen))
			wantTOC := readTestdata(t, name+".toc.json")
			var got, want TOC
			if err := json.Unmarshal(toc, &got); err != nil {
				t.Fatal(err)
			}
			if err := json.Unmarshal(wantTOC, &want); err != nil {
				t.Fatal(err)
			}
			if len(got.Entries) != len(want.Entries) {
				t.Fatalf("%d entries, want %d", len(got.Entries), len(want.Entries))
			}
			for i := range got.Entries {
				g, _ := json.Marshal(got.Entries[i])
				w, _ := json.Marshal(want.Entries[i])
				if !bytes.Equal(g, w) {
					t.Fatalf("entry %d:\n got %s\nwant %s", i, g, w)
				}
			}
			if !bytes.Equal(toc, wantTOC) {
				t.Errorf("TOC JSON differs from reference")
			}
			ts := decompressRange(t, out.Bytes(), int64(f.tarSplitOffset), int64(f.tarSplitLen))
			if !bytes.Equal(ts, readTestdata(t, name+".tar-split.json")) {
				t.Errorf("tar-split differs from reference")
			}
			var wantDesc Descriptor
			if err := json.Unmarshal(readTestdata(t, name+".descriptor.json"), &wantDesc); err != nil {
				t.Fatal(err)
			}
			if desc.DiffID != wantDesc.DiffID {
				t.Errorf("diffID %s, want %s", desc.DiffID, wantDesc.DiffID)
			}
			if ref := readTestdata(t, name+".zstd-chunked"); !bytes.Equal(out.Bytes(), ref) {
				t.Errorf("blob not byte-identical to the reference (%d vs %d bytes)", out.Len(), len(ref))
			} else if desc.Digest != wantDesc.Digest || desc.Size != wantDesc.Size {
				t.Errorf("descriptor %+v, want %+v", desc, wantDesc)
			}
			for k, v := range wantDesc.Annotations {
				if desc.Annotations[k] != v {
					t.Errorf("annotation %s = %q, want %q", k, desc.Annotations[k], v)
				}
			}
		})
	}
}
