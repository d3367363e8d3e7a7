package tarstream

import (
	"archive/tar"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"reflect"
	"runtime"
	"strings"
	"testing"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testdata"
)

// oddTar is a tar whose names exercise the JSON escapes and tar-split's name_raw.
func oddTar(t testing.TB) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	names := []string{"plain", `quote"d`, `back\slash`, "html<&>", "tab\tname", "ünïcode", "\xff\xferaw", "long/" + string(bytes.Repeat([]byte("n"), 300))}
	for i, n := range names {
		body := bytes.Repeat([]byte{byte(i)}, i*700)
		if err := tw.WriteHeader(&tar.Header{Name: n, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg, Format: tar.FormatPAX}); err != nil {
			t.Fatal(err)
		}
		tw.Write(body)
	}
	tw.WriteHeader(&tar.Header{Name: "dir/", Mode: 0o755, Typeflag: tar.TypeDir})
	tw.Close()
	return buf.Bytes()
}

func tarSplitOf(t testing.TB, tarBytes []byte) []byte {
	var ts bytes.Buffer
	if err := Walk(bytes.NewReader(tarBytes), &ts, func(*tar.Header, io.Reader) error { return nil }); err != nil {
		t.Fatal(err)
	}
	return ts.Bytes()
}

func unpackAll(t testing.TB, ts []byte) []storage.Entry {
	up := storage.NewJSONUnpacker(bytes.NewReader(ts))
	var out []storage.Entry
	for {
		e, err := up.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, *e)
	}
}

func normEntries(es []storage.Entry) []storage.Entry {
	for i := range es {
		if len(es[i].Payload) == 0 {
			es[i].Payload = nil
		}
		if len(es[i].NameRaw) == 0 {
			es[i].NameRaw = nil
		}
	}
	return es
}

// TestDecodeTarSplitMatchesUnpacker: the fast decoder gives what tar-split's own unpacker gives,
// for names that need escapes or name_raw, and the rebuilt tar is the original.
func TestDecodeTarSplitMatchesUnpacker(t *testing.T) {
	tarBytes := oddTar(t)
	ts := tarSplitOf(t, tarBytes)
	got, err := DecodeTarSplit(ts, MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	want := unpackAll(t, ts)
	if !reflect.DeepEqual(normEntries(got), normEntries(want)) {
		t.Fatalf("DecodeTarSplit differs from the unpacker:\n got %+v\nwant %+v", got, want)
	}
	files := tarFiles(t, tarBytes)
	var out bytes.Buffer
	err = Rebuild(ts, func(name string, size int64) (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(files[name])), nil
	}, &out)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(out.Bytes(), tarBytes) {
		t.Fatalf("rebuilt tar differs (%d vs %d bytes)", out.Len(), len(tarBytes))
	}
	// A file shorter or longer than tar-split says is an error, not a different tar.
	for _, delta := range []int{-1, 1} {
		err = Rebuild(ts, func(name string, size int64) (io.ReadCloser, error) {
			b := files[name]
			if delta < 0 {
				b = b[:len(b)-1]
			} else {
				b = append(bytes.Clone(b), 0)
			}
			return io.NopCloser(bytes.NewReader(b)), nil
		}, io.Discard)
		if err == nil {
			t.Fatalf("file %+d byte: no error", delta)
		}
	}
}

// TestDecodeTarSplitFallback: lines not in the packer's shape still decode as encoding/json
// decodes them, and malformed ones are errors.
func TestDecodeTarSplitFallback(t *testing.T) {
	ts := []byte("{\"type\":2,\"payload\":\"AAE=\",\"position\":0}\n" +
		" { \"Type\" : 1, \"name\" : \"a\\u00e9\", \"size\": 3, \"payload\": null, \"position\": 1 }\n\n" +
		"{\"type\":1,\"name\":\"x\",\"size\":1e0,\"position\":2}\n")
	if _, err := DecodeTarSplit(ts, MaxTarSplitLines); err == nil {
		t.Fatal("size 1e0 accepted")
	}
	es, err := DecodeTarSplit(ts[:bytes.LastIndexByte(ts[:len(ts)-1], '\n')+1], MaxTarSplitLines)
	if err != nil {
		t.Fatal(err)
	}
	if len(es) != 2 || es[1].Name != "aé" || es[1].Size != 3 || es[1].Type != storage.FileType || !bytes.Equal(es[0].Payload, []byte{0, 1}) {
		t.Fatalf("decoded %+v", es)
	}
	for _, bad := range []string{"{", `{"type":1,}`, `{"type":"1"}`, `{"payload":"!!"}`, `{"type":1}{"type":2}`, `[1]`} {
		if _, err := DecodeTarSplit([]byte(bad+"\n"), MaxTarSplitLines); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// FuzzDecodeTarSplitLine: whenever the fast path accepts a line, encoding/json accepts it too
// and decodes the same entry.
func FuzzDecodeTarSplitLine(f *testing.F) {
	for _, l := range bytes.Split(tarSplitOf(f, oddTar(f)), []byte{'\n'}) {
		f.Add(l)
	}
	f.Add([]byte(`{"type":1,"name":"a","size":-0,"payload":null,"position":01}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		slab := make([]byte, 0, len(line))
		fast, ok := decodeEntry(line, &slab)
		if !ok {
			return
		}
		var std storage.Entry
		if err := json.Unmarshal(line, &std); err != nil {
			t.Fatalf("fast path accepted %q, encoding/json: %v", line, err)
		}
		if !reflect.DeepEqual(normEntries([]storage.Entry{fast}), normEntries([]storage.Entry{std})) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", line, fast, std)
		}
	})
}

// allocated runs f and returns the MiB it allocated.
func allocated(f func()) uint64 {
	var m0, m1 runtime.MemStats
	runtime.ReadMemStats(&m0)
	f()
	runtime.ReadMemStats(&m1)
	return (m1.TotalAlloc - m0.TotalAlloc) >> 20
}

// Blank and whitespace-only tar-split lines count against the limit, before anything is
// allocated for them.
func TestTarSplitLineLimit(t *testing.T) {
	b := []byte(`{"type":2,"payload":"AAAA","position":0}` + "\n" + strings.Repeat(" \n", 1<<23))
	var err error
	mib := allocated(func() { _, err = DecodeTarSplit(b, 1000) })
	if !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("8Mi blank lines with a limit of 1000: %v", err)
	}
	if mib > 1 {
		t.Fatalf("refusing allocated %d MiB", mib)
	}
	if _, err := DecodeTarSplit(b, MaxTarSplitLines); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("8Mi lines at the default limit of %d: %v", MaxTarSplitLines, err)
	}
	if es, err := DecodeTarSplit(b[:len(b)-2*(1<<22)-2], MaxTarSplitLines); err != nil || len(es) != 1 {
		t.Fatalf("4Mi lines at the default limit of %d: %d entries, %v", MaxTarSplitLines, len(es), err)
	}
}

// BenchmarkDecodeTarSplit decodes a real layer's tar-split (the metadata parse of every pull).
func BenchmarkDecodeTarSplit(b *testing.B) {
	js, err := testdata.Read("zstd-chunked", "real.tar-split.json")
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(js)))
	for b.Loop() {
		if _, err := DecodeTarSplit(js, MaxTarSplitLines); err != nil {
			b.Fatal(err)
		}
	}
}
