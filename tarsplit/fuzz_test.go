package tarsplit

import (
	"bytes"
	"testing"
	"time"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/layerfs"
	"github.com/kura-oci/kura/tarstream"
)

// FuzzPredict feeds hostile stored tar-splits to a prediction of the mixed vector's layer:
// errors are fine, panics and inexact "successes" that claim reuse of bad bytes are not.
func FuzzPredict(f *testing.F) {
	tocJSON, err := readVectorFile("mixed.toc.json")
	if err != nil {
		f.Fatal(err)
	}
	toc, err := chunked.ParseTOC(tocJSON)
	if err != nil {
		f.Fatal(err)
	}
	model, err := chunked.DecodeEntries(toc)
	if err != nil {
		f.Fatal(err)
	}
	ts, err := readVectorFile("mixed.tar-split.json")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(ts)
	f.Add(ts[:len(ts)/2])
	f.Add(bytes.Replace(ts, []byte(`"type":1`), []byte(`"type":2`), 3))
	f.Add([]byte(`{"type":2,"payload":"AAAA","position":0}` + "\n"))
	f.Fuzz(func(t *testing.T, tarSplit []byte) {
		out, _, err := PredictJSON(model, []Known{{Entries: model, TarSplit: tarSplit}}, nil)
		if err == nil && bytes.Equal(tarSplit, ts) && !bytes.Equal(out, ts) {
			t.Fatal("the true tar-split did not predict itself")
		}
		// PredictEntries decodes the same bytes in place: it must agree, entry for entry.
		entries, _, eerr := PredictEntries(model, []Known{{Entries: model, TarSplit: bytes.Clone(tarSplit)}}, nil)
		if (err == nil) != (eerr == nil) {
			t.Fatalf("PredictJSON: %v; PredictEntries: %v", err, eerr)
		}
		if err != nil {
			return
		}
		want, err := tarstream.DecodeTarSplit(out, tarstream.MaxTarSplitLines)
		if err != nil {
			t.Fatalf("PredictJSON wrote a tar-split that does not decode: %v", err)
		}
		if len(want) != len(entries) {
			t.Fatalf("%d entries from PredictEntries, %d from PredictJSON", len(entries), len(want))
		}
		for i := range want {
			g, w := entries[i], want[i]
			if g.Type != w.Type || g.GetName() != w.GetName() || g.Size != w.Size || !bytes.Equal(g.Payload, w.Payload) {
				t.Fatalf("entry %d: PredictEntries %+v, PredictJSON %+v", i, g, w)
			}
		}
	})
}

// FuzzSynthesize writes an entry's header modelled on hostile template bytes: no panics, and
// whatever comes out reads back as the entry.
func FuzzSynthesize(f *testing.F) {
	for _, flag := range []byte{'0', '5', '2'} {
		h := headerBlock(flag)
		f.Add(h, "etc/new", int64(10), int64(1714564800), int64(0o644))
	}
	f.Add(make([]byte, 1024), "x", int64(0), int64(0), int64(0))
	f.Fuzz(func(t *testing.T, raw []byte, name string, size, mtime, mode int64) {
		if len(raw) > 1<<16 {
			return
		}
		mt := time.Unix(mtime, 0).UTC()
		e := &layerfs.Entry{Type: layerfs.TypeReg, Name: name, Size: size, Mode: mode, ModTime: &mt}
		tmpl := &record{entry: &layerfs.Entry{Type: layerfs.TypeReg, Name: "tmpl"}, seg: raw, single: true}
		out, err := synthesize(e, tmpl, nil)
		if err == nil && !describes(out, e) {
			t.Fatalf("synthesized header does not read back as %+v", e)
		}
	})
}

// headerBlock is a plain ustar header of the given type, for seeds.
func headerBlock(flag byte) []byte {
	var buf bytes.Buffer
	buf.Write(make([]byte, 0, 512))
	b := make([]byte, 512)
	copy(b, "etc/file")
	copy(b[100:], "0000644\x000000000\x000000000\x0000000000005\x0014614427300\x00        ")
	b[156] = flag
	copy(b[257:], "ustar\x0000")
	checksum(b)
	return b
}
