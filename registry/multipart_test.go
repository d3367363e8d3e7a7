package registry

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/textproto"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

func TestByteRangesBoundary(t *testing.T) {
	tests := []struct {
		ct        string
		want      string
		multipart bool
		err       bool
	}{
		{"application/octet-stream", "", false, false},
		{"", "", false, false},
		{"multipart/byteranges; boundary=abc", "abc", true, false},
		{`multipart/byteranges; boundary="a:b c"`, "a:b c", true, false},
		{"multipart/byteranges; boundary=CloudFront:5A3E7B19C2D4", "CloudFront:5A3E7B19C2D4", true, false},
		{"Multipart/ByteRanges;charset=x;Boundary=CloudFront:1", "CloudFront:1", true, false},
		{"multipart/byteranges", "", true, true},
		{"multipart/byteranges; boundary=", "", true, true},
		{"multipart/byteranges; boundary=" + string(bytes.Repeat([]byte("x"), maxBoundary+1)), "", true, true},
	}
	for _, tt := range tests {
		got, mp, err := byteRangesBoundary(tt.ct)
		if got != tt.want || mp != tt.multipart || (err != nil) != tt.err {
			t.Errorf("byteRangesBoundary(%q) = %q, %v, %v", tt.ct, got, mp, err)
		}
	}
}

func TestParseContentRange(t *testing.T) {
	good := map[string]contentRange{
		"bytes 0-0/1":       {0, 0, 1},
		"bytes 10-19/*":     {10, 19, -1},
		"Bytes 5-9/10":      {5, 9, 10},
		"bytes 0-99/100000": {0, 99, 100000},
	}
	for in, want := range good {
		got, err := parseContentRange(in)
		if err != nil || got != want {
			t.Errorf("parseContentRange(%q) = %+v, %v", in, got, err)
		}
	}
	for _, in := range []string{"", "bytes", "bytes */10", "bytes 5-4/10", "bytes 0-9/9", "bytes -1-4/10", "bytes +1-4/10", "items 0-1/2", "bytes 0-1", "bytes 0-99999999999999999999/*"} {
		if _, err := parseContentRange(in); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("parseContentRange(%q) accepted", in)
		}
	}
}

// multipartBody builds a byteranges body the way Go's http.ServeContent does.
func multipartBody(t testing.TB, blob []byte, parts [][2]int64, boundary string) []byte {
	var buf bytes.Buffer
	mw := multipart.NewWriter(&buf)
	if err := mw.SetBoundary(boundary); err != nil {
		t.Fatal(err)
	}
	for _, p := range parts {
		h := textproto.MIMEHeader{}
		h.Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", p[0], p[1], len(blob)))
		w, _ := mw.CreatePart(h)
		w.Write(blob[p[0] : p[1]+1])
	}
	mw.Close()
	return buf.Bytes()
}

// readAll drains a source the way a worker does, returning the bytes of each part.
func readAllParts(s *rangeSource) ([][]byte, error) {
	var out [][]byte
	for !s.exhausted() {
		p, start, end, err := s.nextPart()
		if err != nil {
			return out, err
		}
		b, err := io.ReadAll(io.LimitReader(p, end-start))
		if err != nil {
			return out, err
		}
		if int64(len(b)) != end-start {
			return out, fmt.Errorf("short part")
		}
		out = append(out, b)
	}
	return out, nil
}

func TestRangeSourceMultipart(t *testing.T) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	want := []contentRange{{0, 3, 36}, {10, 12, 36}}
	body := multipartBody(t, blob, [][2]int64{{0, 3}, {10, 12}}, "b0undary")
	s, err := newRangeSource("multipart/byteranges; boundary=b0undary", "", io.NopCloser(bytes.NewReader(body)), want, 36)
	if err != nil {
		t.Fatal(err)
	}
	parts, err := readAllParts(s)
	if err != nil || string(parts[0]) != "0123" || string(parts[1]) != "abc" {
		t.Fatalf("parts %q, %v", parts, err)
	}

	// A part for another range than asked is an error.
	body = multipartBody(t, blob, [][2]int64{{0, 3}, {11, 13}}, "b0undary")
	s, _ = newRangeSource("multipart/byteranges; boundary=b0undary", "", io.NopCloser(bytes.NewReader(body)), want, 36)
	if _, err := readAllParts(s); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("wrong part accepted: %v", err)
	}
	// Fewer parts than asked.
	body = multipartBody(t, blob, [][2]int64{{0, 3}}, "b0undary")
	s, _ = newRangeSource("multipart/byteranges; boundary=b0undary", "", io.NopCloser(bytes.NewReader(body)), want, 36)
	if _, err := readAllParts(s); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("missing part accepted: %v", err)
	}
	// A single-part answer to a two-range request.
	if _, err := newRangeSource("application/octet-stream", "bytes 0-3/36", io.NopCloser(bytes.NewReader(blob)), want, 36); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("single part for two ranges accepted: %v", err)
	}
	// A total size that is not the blob's.
	if _, err := newRangeSource("", "bytes 0-3/37", io.NopCloser(bytes.NewReader(blob)), want[:1], 36); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("wrong total accepted: %v", err)
	}
}

// FuzzRangeSource feeds hostile multipart answers to the parser that checks them against a
// fixed request. It must never panic, and any part it accepts must be one that was asked for.
func FuzzRangeSource(f *testing.F) {
	blob := []byte("0123456789abcdefghijklmnopqrstuvwxyz")
	f.Add("multipart/byteranges; boundary=b", multipartBody(f, blob, [][2]int64{{0, 3}, {10, 12}}, "b"))
	f.Add("multipart/byteranges; boundary=CloudFront:1", multipartBody(f, blob, [][2]int64{{0, 3}, {10, 12}}, "CloudFront:1"))
	f.Add("multipart/byteranges; boundary=b", multipartBody(f, blob, [][2]int64{{0, 3}, {10, 13}}, "b"))
	f.Add("multipart/byteranges; boundary=b", []byte("--b\r\nContent-Range: bytes 0-3/36\r\n\r\n0123\r\n--b--"))
	f.Add("multipart/byteranges; boundary=\"b\"", []byte("\r\n--b\r\nContent-Range: bytes 0-3/36\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=30123\r\n--b--"))
	want := []contentRange{{0, 3, 36}, {10, 12, 36}}
	f.Fuzz(func(t *testing.T, ct string, body []byte) {
		s, err := newRangeSource(ct, "bytes 0-3/36", io.NopCloser(bytes.NewReader(body)), want, 36)
		if err != nil {
			return
		}
		for !s.exhausted() {
			i := s.next
			p, start, end, err := s.nextPart()
			if err != nil {
				return
			}
			if start != want[i].start || end != want[i].end+1 {
				t.Fatalf("part %d covers %d-%d, asked %+v", i, start, end, want[i])
			}
			io.Copy(io.Discard, io.LimitReader(p, end-start))
		}
	})
}

func FuzzParseContentRange(f *testing.F) {
	for _, s := range []string{"bytes 0-0/1", "bytes 10-19/*", "bytes 5-4/10", "bytes 1-2/3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		cr, err := parseContentRange(s)
		if err != nil {
			return
		}
		if cr.start < 0 || cr.end < cr.start || cr.total != -1 && cr.total <= cr.end {
			t.Fatalf("parseContentRange(%q) = %+v", s, cr)
		}
	})
}
