package tarsplit

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"unicode/utf8"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/tarstream"
)

// The tar-split JSON stream, read and written here rather than by storage's packer and unpacker:
// through encoding/json they cost most of a prediction. Lines are exactly what storage's packer
// writes (json.Encoder of a storage.Entry), which the tests check against it.

// line is one decoded tar-split line. Payloads stay base64 text: a reused segment is copied
// without being decoded and encoded again.
type line struct {
	typ     storage.Type
	name    string
	size    int64
	payload []byte // base64 text; nil for null
}

// decoded returns the line's payload bytes.
func (l *line) decoded() ([]byte, error) {
	if l.payload == nil {
		return nil, nil
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(l.payload)))
	n, err := base64.StdEncoding.Decode(b, l.payload)
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return b[:n], nil
}

// unpacker reads tar-split JSON lines.
type unpacker struct {
	rest  []byte
	line  int
	lines int // every line read, blank ones included: each costs a step
}

func newUnpacker(b []byte) *unpacker { return &unpacker{rest: b} }

func (u *unpacker) next() (line, error) {
	for len(u.rest) > 0 && (u.rest[0] == '\n' || u.rest[0] == ' ' || u.rest[0] == '\t' || u.rest[0] == '\r') {
		if u.rest[0] == '\n' {
			u.lines++
		}
		u.rest = u.rest[1:]
	}
	if u.lines+u.line >= tarstream.MaxTarSplitLines {
		return line{}, fmt.Errorf("more than %d tar-split lines: %w", tarstream.MaxTarSplitLines, errdefs.ErrInvalid)
	}
	if len(u.rest) == 0 {
		return line{}, io.EOF
	}
	text := u.rest
	if i := bytes.IndexByte(text, '\n'); i >= 0 {
		text, u.rest = text[:i], text[i+1:]
	} else {
		u.rest = nil
	}
	u.line++
	l, err := decodeLine(text)
	if err != nil {
		return line{}, fmt.Errorf("line %d: %w", u.line, err)
	}
	return l, nil
}

// decodeLine decodes one tar-split JSON line. Lines as storage's packer writes them (fields in
// its order, names without escapes) take a direct path; any other valid JSON still decodes,
// through encoding/json.
func decodeLine(text []byte) (line, error) {
	if l, ok := decodeFast(text); ok {
		return l, nil
	}
	var e storage.Entry
	if err := json.Unmarshal(text, &e); err != nil {
		return line{}, err
	}
	l := line{typ: e.Type, name: e.GetName(), size: e.Size}
	if e.Payload != nil {
		l.payload = base64.StdEncoding.AppendEncode([]byte{}, e.Payload)
	}
	return l, nil
}

// b64 marks the bytes of standard base64 text.
var b64 = func() (t [256]bool) {
	for _, c := range []byte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") {
		t[c] = true
	}
	return t
}()

// decodeFast parses `{"type":T[,"name":"N"][,"size":S],"payload":null|"B64","position":P}`. It
// reports false for anything else, including strings with escapes, invalid UTF-8 and payloads
// that are not base64 text, whose handling encoding/json defines.
func decodeFast(p []byte) (line, bool) {
	var l line
	take := func(prefix string) bool {
		if len(p) >= len(prefix) && string(p[:len(prefix)]) == prefix {
			p = p[len(prefix):]
			return true
		}
		return false
	}
	number := func() (int64, bool) {
		i := 0
		for i < len(p) && i < 18 && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		if i == 0 || (i > 1 && p[0] == '0') {
			return 0, false
		}
		n, err := strconv.ParseInt(string(p[:i]), 10, 64)
		p = p[i:]
		return n, err == nil
	}
	// str returns a string's text up to its closing quote: only characters JSON takes literally.
	str := func() ([]byte, bool) {
		end := bytes.IndexByte(p, '"')
		if end < 0 {
			return nil, false
		}
		s := p[:end]
		if bytes.IndexByte(s, '\\') >= 0 {
			return nil, false
		}
		p = p[end+1:]
		return s, true
	}
	if !take(`{"type":`) {
		return l, false
	}
	t, ok := number()
	if !ok || t > 1<<20 {
		return l, false
	}
	l.typ = storage.Type(t)
	if take(`,"name":"`) {
		s, ok := str()
		if !ok || !utf8.Valid(s) || bytes.ContainsFunc(s, func(r rune) bool { return r < 0x20 }) {
			return l, false
		}
		l.name = string(s)
	}
	if take(`,"size":`) {
		if l.size, ok = number(); !ok {
			return l, false
		}
	}
	switch {
	case take(`,"payload":null`):
	case take(`,"payload":"`):
		s, ok := str()
		if !ok || len(s)%4 != 0 {
			return l, false
		}
		// A payload is copied into the predicted stream as it is, so it must be base64 text; the
		// check runs over the (short) tail only: segments are tested where they are decoded.
		if len(s) <= 16 {
			for _, c := range s {
				if !b64[c] {
					return l, false
				}
			}
		}
		l.payload = s
	default:
		return l, false
	}
	if !take(`,"position":`) {
		return l, false
	}
	if _, ok := number(); !ok {
		return l, false
	}
	if !take(`}`) || len(bytes.TrimRight(p, " \t\r")) > 0 {
		return l, false
	}
	return l, true
}

// packer writes tar-split JSON lines byte for byte as storage's JSON packer does, refusing
// duplicate paths as it does.
type packer struct {
	buf  lineWriter
	pos  int
	seen map[string]struct{}
	tmp  []byte
}

// lineWriter is where a packer writes: a bytes.Buffer or a bufio.Writer.
type lineWriter interface {
	io.Writer
	io.StringWriter
	io.ByteWriter
}

func newPacker(buf lineWriter, entries int) *packer {
	return &packer{buf: buf, seen: make(map[string]struct{}, entries)}
}

// reuse writes a known entry's segment, copying its base64 text where the index kept it.
func (p *packer) reuse(r *record) {
	if r.seg64 != nil {
		p.segment64(r.seg64)
	} else {
		p.segment(r.seg)
	}
}

// segment64 writes a segment whose payload is given as base64 text.
func (p *packer) segment64(text []byte) {
	p.buf.WriteString(`{"type":2,"payload":"`)
	p.buf.Write(text)
	p.endLine(`"`)
}

// segment writes a segment.
func (p *packer) segment(b []byte) {
	p.tmp = base64.StdEncoding.AppendEncode(p.tmp[:0], b)
	p.segment64(p.tmp)
}

func (p *packer) endLine(before string) {
	p.tmp = strconv.AppendInt(append(append(p.tmp[:0], before...), `,"position":`...), int64(p.pos), 10)
	p.tmp = append(p.tmp, "}\n"...)
	p.buf.Write(p.tmp)
	p.pos++
}

// file writes a file entry; payload is its CRC (nil for no content).
func (p *packer) file(name string, size int64, payload []byte) error {
	if err := checkDup(p.seen, name); err != nil {
		return err
	}
	p.buf.WriteString(`{"type":1`)
	switch {
	case name == "":
	case !utf8.ValidString(name):
		p.buf.WriteString(`,"name_raw":"`)
		p.buf.Write(base64.StdEncoding.AppendEncode(p.tmp[:0], []byte(name)))
		p.buf.WriteByte('"')
	default:
		p.buf.WriteString(`,"name":`)
		p.buf.Write(appendJSONString(p.tmp[:0], name))
	}
	if size != 0 {
		p.buf.WriteString(`,"size":`)
		p.buf.Write(strconv.AppendInt(p.tmp[:0], size, 10))
	}
	if payload == nil {
		p.buf.WriteString(`,"payload":null`)
		p.endLine("")
		return nil
	}
	p.buf.WriteString(`,"payload":"`)
	p.buf.Write(base64.StdEncoding.AppendEncode(p.tmp[:0], payload))
	p.endLine(`"`)
	return nil
}

// checkDup refuses a path seen before, as storage's packer does.
func checkDup(seen map[string]struct{}, name string) error {
	clean := filepath.Clean(name)
	if _, dup := seen[clean]; dup {
		return fmt.Errorf("%q: %w", name, storage.ErrDuplicatePath)
	}
	seen[clean] = struct{}{}
	return nil
}

// entrySink collects a predicted tar-split as decoded entries.
type entrySink struct {
	entries []storage.Entry
	seen    map[string]struct{}
}

func (s *entrySink) reuse(r *record) { s.add(storage.Entry{Type: storage.SegmentType, Payload: r.seg}) }

func (s *entrySink) segment(b []byte) {
	s.add(storage.Entry{Type: storage.SegmentType, Payload: bytes.Clone(b)})
}

func (s *entrySink) file(name string, size int64, crc []byte) error {
	if err := checkDup(s.seen, name); err != nil {
		return err
	}
	e := storage.Entry{Type: storage.FileType, Size: size, Payload: crc}
	e.SetName(name)
	s.add(e)
	return nil
}

func (s *entrySink) add(e storage.Entry) {
	e.Position = len(s.entries)
	s.entries = append(s.entries, e)
}

// WriteJSON writes decoded tar-split entries (PredictEntries's, or chunked.DecodeTarSplit's) as
// the tar-split JSON stream, byte for byte as storage's packer writes it.
func WriteJSON(w io.Writer, entries []storage.Entry) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	p := newPacker(bw, len(entries)/2)
	for i := range entries {
		e := &entries[i]
		switch e.Type {
		case storage.SegmentType:
			p.segment(e.Payload)
		case storage.FileType:
			if err := p.file(e.GetName(), e.Size, e.Payload); err != nil {
				return err
			}
		default:
			return fmt.Errorf("tar-split entry type %d: %w", e.Type, errdefs.ErrInvalid)
		}
	}
	return bw.Flush()
}

// appendJSONString appends s as encoding/json writes it (HTML-safe escapes included).
func appendJSONString(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x80 || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			b, _ := json.Marshal(s) // a string always encodes
			return append(dst, b...)
		}
	}
	dst = append(dst, '"')
	dst = append(dst, s...)
	return append(dst, '"')
}
