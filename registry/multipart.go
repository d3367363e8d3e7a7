package registry

import (
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// maxBoundary bounds a multipart boundary (RFC 2046 says 70; be lenient, not unbounded).
const maxBoundary = 200

// byteRangesBoundary returns the boundary when contentType is multipart/byteranges. Unlike
// mime.ParseMediaType it accepts an unquoted boundary containing characters that need quoting,
// such as CloudFront's "boundary=CloudFront:…".
func byteRangesBoundary(contentType string) (string, bool, error) {
	mt, params, _ := strings.Cut(contentType, ";")
	if !strings.EqualFold(strings.TrimSpace(mt), "multipart/byteranges") {
		return "", false, nil
	}
	var b string
	if _, p, err := mime.ParseMediaType(contentType); err == nil && p["boundary"] != "" {
		b = p["boundary"]
	} else {
		for _, param := range strings.Split(params, ";") {
			k, v, ok := strings.Cut(strings.TrimSpace(param), "=")
			if !ok || !strings.EqualFold(strings.TrimSpace(k), "boundary") {
				continue
			}
			v = strings.TrimSpace(v)
			if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
				v = v[1 : len(v)-1]
			}
			b = v
			break
		}
	}
	if b == "" || len(b) > maxBoundary || strings.ContainsAny(b, "\r\n\x00") {
		return "", true, fmt.Errorf("multipart/byteranges answer with boundary %q: %w", b, errdefs.ErrInvalid)
	}
	return b, true, nil
}

// rangeSource yields the parts of one range answer, each checked against what was asked.
type rangeSource struct {
	body io.ReadCloser
	size int64
	// want are the requested ranges, inclusive ends, in request order.
	want []contentRange
	next int
	// full: a 200 answer, one part covering the whole blob.
	full bool
	mr   *multipart.Reader
}

// errProtocol marks answers that are wrong rather than interrupted: retrying will not help.
type errProtocol struct{ error }

func (e errProtocol) Unwrap() error { return e.error }

func protocolError(format string, args ...any) error {
	return errProtocol{fmt.Errorf(format+": %w", append(args, errdefs.ErrInvalid)...)}
}

// newRangeSource checks a 206 answer's headers against want. contentType and contentRange are
// the response headers.
func newRangeSource(contentType, contentRange string, body io.ReadCloser, want []contentRange, size int64) (*rangeSource, error) {
	s := &rangeSource{body: body, size: size, want: want}
	boundary, isMultipart, err := byteRangesBoundary(contentType)
	if err != nil {
		return nil, errProtocol{err}
	}
	if isMultipart {
		s.mr = multipart.NewReader(body, boundary)
		return s, nil
	}
	if len(want) != 1 {
		return nil, protocolError("asked for %d ranges, server answered one part (Content-Range %q)", len(want), contentRange)
	}
	if err := s.check(contentRange, 0); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *rangeSource) check(header string, i int) error {
	cr, err := parseContentRange(header)
	if err != nil {
		return errProtocol{fmt.Errorf("part %d: %w", i, err)}
	}
	w := s.want[i]
	if cr.start != w.start || cr.end != w.end || (cr.total >= 0 && cr.total != s.size) {
		return protocolError("asked for bytes %d-%d/%d, server answered Content-Range %q", w.start, w.end, s.size, header)
	}
	return nil
}

// exhausted reports that every asked part has been handed out.
func (s *rangeSource) exhausted() bool { return !s.full && s.next >= len(s.want) }

// nextPart returns the next part and the blob offsets it covers, [start, end).
func (s *rangeSource) nextPart() (io.Reader, int64, int64, error) {
	if s.full {
		if s.next > 0 {
			return nil, 0, 0, protocolError("read past the end of a whole-blob answer")
		}
		s.next++
		return s.body, 0, s.size, nil
	}
	if s.next >= len(s.want) {
		return nil, 0, 0, protocolError("server sent more data than the %d ranges asked", len(s.want))
	}
	i := s.next
	w := s.want[i]
	if s.mr == nil {
		s.next++
		return s.body, w.start, w.end + 1, nil
	}
	p, err := s.mr.NextRawPart()
	if errors.Is(err, io.EOF) {
		return nil, 0, 0, protocolError("asked for %d ranges, multipart answer ended after %d", len(s.want), i)
	}
	if err != nil {
		// A cut connection shows up here as io.ErrUnexpectedEOF: transient.
		return nil, 0, 0, fmt.Errorf("reading multipart answer, part %d: %w", i, err)
	}
	if err := s.check(p.Header.Get("Content-Range"), i); err != nil {
		return nil, 0, 0, err
	}
	s.next++
	return p, w.start, w.end + 1, nil
}

func (s *rangeSource) close() error { return s.body.Close() }
