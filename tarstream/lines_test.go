package tarstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/internal/testdata"
)

// referencePack writes entries with storage's JSON packer.
func referencePack(entries []storage.Entry) ([]byte, error) {
	var buf bytes.Buffer
	p := storage.NewJSONPacker(&buf)
	for _, e := range entries {
		if _, err := p.AddEntry(e); err != nil {
			return buf.Bytes(), err
		}
	}
	return buf.Bytes(), nil
}

// ourPack writes the same entries with Packer.
func ourPack(entries []storage.Entry) ([]byte, error) {
	var buf bytes.Buffer
	p := NewPacker(&buf, len(entries))
	for _, e := range entries {
		switch e.Type {
		case storage.SegmentType:
			p.Segment(e.Payload)
		case storage.FileType:
			if err := p.File(e.GetName(), e.Size, e.Payload); err != nil {
				return buf.Bytes(), err
			}
		}
	}
	return buf.Bytes(), nil
}

// samePacking checks that Packer writes what storage's packer writes, and that LineReader
// reads it back.
func samePacking(t *testing.T, entries []storage.Entry) {
	t.Helper()
	want, werr := referencePack(entries)
	got, gerr := ourPack(entries)
	if (werr == nil) != (gerr == nil) || (werr != nil && !errors.Is(gerr, werr)) {
		t.Fatalf("errors differ: ours %v, storage's %v", gerr, werr)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("packing differs:\n got %s\nwant %s", got, want)
	}
	up := NewLineReader(got, MaxTarSplitLines)
	for i, e := range entries {
		if werr != nil {
			break
		}
		l, err := up.Next()
		if err != nil {
			t.Fatalf("reading back entry %d: %v", i, err)
		}
		payload, err := l.DecodedPayload()
		if err != nil || l.Type != e.Type || l.Name != e.GetName() || l.Size != e.Size || !bytes.Equal(payload, e.Payload) || (payload == nil) != (e.Payload == nil) {
			t.Fatalf("entry %d read back as %+v (%q, %v), want %+v", i, l, payload, err, e)
		}
	}
}

func TestPackerMatchesStorage(t *testing.T) {
	names := []string{
		"etc/hostname", "usr/share/ファイル.txt", "a\"quote", "back\\slash", "<html>&", "tab\there",
		"nl\nname", "\x7f", "line\u2028sep", "bad\xffutf8", strings.Repeat("x", 300), "./", "a/../b", "",
	}
	var entries []storage.Entry
	for i, n := range names {
		entries = append(entries, storage.Entry{Type: storage.SegmentType, Payload: bytes.Repeat([]byte{byte(i)}, 512+i)})
		e := storage.Entry{Type: storage.FileType, Size: int64(i)}
		if i > 0 {
			e.Payload = []byte{1, 2, 3, 4, 5, 6, 7, byte(i)}
		}
		e.SetName(n)
		entries = append(entries, e)
	}
	entries = append(entries, storage.Entry{Type: storage.SegmentType, Payload: make([]byte, 1024)})
	samePacking(t, entries)
	// Duplicate paths are refused alike.
	dup := []storage.Entry{{Type: storage.FileType, Name: "a/b"}, {Type: storage.FileType, Name: "a//b/"}}
	samePacking(t, dup)
}

// FuzzPacker: for any names, sizes and payloads, Packer writes storage's bytes.
func FuzzPacker(f *testing.F) {
	f.Add("etc/hostname", int64(5), []byte("12345678"), []byte("header"))
	f.Add("bad\xff<&>\"\\\n", int64(0), []byte(nil), []byte{0})
	f.Fuzz(func(t *testing.T, name string, size int64, crc, seg []byte) {
		if len(seg) == 0 {
			seg = []byte{0}
		}
		e := storage.Entry{Type: storage.FileType, Size: size, Payload: crc}
		e.SetName(name)
		samePacking(t, []storage.Entry{{Type: storage.SegmentType, Payload: seg}, e})
	})
}

// FuzzDecodeLine: the direct decoder agrees with encoding/json wherever it accepts a line whose
// payload decodes, and nothing panics.
func FuzzDecodeLine(f *testing.F) {
	f.Add([]byte(`{"type":2,"payload":"AAAA","position":0}`))
	f.Add([]byte(`{"type":1,"name":"etc/hostname","size":5,"payload":"YUQN2drAAAA=","position":3}`))
	f.Add([]byte(`{"type":1,"name":"a","payload":null,"position":1}`))
	f.Add([]byte(`{"type":1,"name_raw":"/w==","payload":null,"position":1}`))
	for _, name := range []string{"mixed", "real"} {
		if b, err := testdata.Read("zstd-chunked", name+".tar-split.json"); err == nil {
			for _, l := range bytes.SplitN(b, []byte("\n"), 8) {
				f.Add(l)
			}
		}
	}
	f.Fuzz(func(t *testing.T, text []byte) {
		fast, ok := parseLine(text)
		if !ok {
			_, _ = DecodeLine(text)
			return
		}
		payload, err := fast.DecodedPayload()
		if err != nil {
			// Long (segment) payloads are checked where they are decoded, not when read.
			if len(fast.Payload) <= 16 {
				t.Fatalf("short payload %q passed the alphabet check but does not decode", fast.Payload)
			}
			return
		}
		var viaJSON storage.Entry
		if err := json.Unmarshal(text, &viaJSON); err != nil {
			t.Fatalf("accepted %q that encoding/json refuses: %v", text, err)
		}
		if fast.Type != viaJSON.Type || fast.Name != viaJSON.GetName() || fast.Size != viaJSON.Size || fast.Position != viaJSON.Position || !bytes.Equal(payload, viaJSON.Payload) {
			t.Fatalf("%q: direct %+v (%q), encoding/json %+v", text, fast, payload, viaJSON)
		}
	})
}
