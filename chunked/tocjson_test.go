package chunked

import (
	"bytes"
	"encoding/json"
	"io"
	"reflect"
	"testing"
)

// stdTOC decodes TOC JSON as ParseTOC's fallback does.
func stdTOC(b []byte) (*TOC, error) {
	var toc TOC
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&toc); err != nil {
		return nil, err
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, io.ErrUnexpectedEOF
	}
	return &toc, nil
}

// TestParseTOCFast: the fast decoder takes the TOCs our writer produces and decodes them as
// encoding/json does; documents in other shapes fall back and still decode.
func TestParseTOCFast(t *testing.T) {
	s := newSample(t)
	b, err := json.Marshal(s.toc)
	if err != nil {
		t.Fatal(err)
	}
	fast, ok := decodeTOCFast(b)
	if !ok {
		t.Fatal("fast path refused the writer's TOC")
	}
	std, err := stdTOC(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(fast, std) {
		t.Fatal("fast and encoding/json decodings differ")
	}
	for _, doc := range []string{
		`{"Version":1,"entries":[]}`,                                // other key case
		`{"version":1,"entries":[{"type":"reg","name":"a\u00e9"}]}`, // escape
		`{"version":1,"entries":[{"type":"reg","name":"a","size":1,"size":2}]}`,
		`{"version":1,"entries":[{"type":"reg","name":"a","xattrs":{"k":"djE="},"xattrs":{"l":""}}]}`,
		` { "version" : 1 , "entries" : [ { "type" : "dir" , "name" : "d/" , "modtime" : "2025-01-02T03:04:05.5+01:00" } ] } `,
	} {
		want, err := stdTOC([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		got, err := ParseTOC([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: got %+v, want %+v", doc, got, want)
		}
	}
	for _, bad := range []string{`{"version":1,"entries":[{"size":1.5}]}`, `{"version":1,"entries":[]}x`, `{"version":1,"entries":[{"modtime":"yesterday"}]}`} {
		if _, err := ParseTOC([]byte(bad)); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

// FuzzParseTOCFast: whenever the fast decoder accepts a document, encoding/json accepts it and
// decodes the same TOC.
func FuzzParseTOCFast(f *testing.F) {
	f.Add([]byte(`{"version":1,"entries":[{"type":"reg","name":"a","size":3,"modtime":"2025-01-02T03:04:05Z","xattrs":{"user.k":"dg=="},"digest":"sha256:00","offset":1,"endOffset":9}],"tarSplitDigest":"x"}`))
	f.Add([]byte(`{"version":null,"entries":null}`))
	f.Add([]byte(`{"version":1,"entries":[{"type":"chunk","chunkSize":-0,"chunkOffset":7,"chunkType":"zeros","uid":1,"gid":2,"devMajor":3,"devMinor":4,"accesstime":null,"changetime":"2025-01-02T03:04:05.123456789-07:00"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		fast, ok := decodeTOCFast(b)
		if !ok {
			return
		}
		std, err := stdTOC(b)
		if err != nil {
			t.Fatalf("fast path accepted %q, encoding/json: %v", b, err)
		}
		if !reflect.DeepEqual(fast, std) {
			t.Fatalf("%q: fast %+v, encoding/json %+v", b, fast, std)
		}
	})
}
