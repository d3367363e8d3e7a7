package tarstream

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
)

// The tar-split JSON stream, read and written here rather than by storage's packer and unpacker:
// through encoding/json they cost most of a prediction or a metadata parse. Lines are exactly what
// storage's packer writes (json.Encoder of a storage.Entry), which the tests check against it.

// Line is one decoded tar-split line. Payload stays base64 text: a reused segment is copied
// without being decoded and encoded again, and DecodeTarSplit decodes all payloads into one
// allocation.
type Line struct {
	Type     storage.Type
	Name     string // the name, or name_raw decoded
	Size     int64
	Payload  []byte // base64 text; nil for null
	Position int
}

// DecodedPayload returns the line's payload bytes.
func (l *Line) DecodedPayload() ([]byte, error) {
	if l.Payload == nil {
		return nil, nil
	}
	b := make([]byte, base64.StdEncoding.DecodedLen(len(l.Payload)))
	n, err := base64.StdEncoding.Decode(b, l.Payload)
	if err != nil {
		return nil, fmt.Errorf("payload: %w", err)
	}
	return b[:n], nil
}

// LineReader reads tar-split JSON lines one by one, refusing more than a bound of lines.
type LineReader struct {
	rest     []byte
	line     int
	lines    int // every line read, blank ones included: each costs a step
	maxLines int
	// br, when set, is the stream read instead of rest; long holds a line longer than its
	// buffer.
	br   *bufio.Reader
	long []byte
}

// NewLineReader reads the lines of b, at most maxLines of them, blank lines included.
func NewLineReader(b []byte, maxLines int) *LineReader {
	return &LineReader{rest: b, maxLines: maxLines}
}

// MaxStreamLine bounds one line that NewLineReaderFrom reads: a tar-split line is one read of
// the tar stream (a header and its extension headers, base64) or one file entry, far smaller.
const MaxStreamLine = 16 << 20

// NewLineReaderFrom reads the lines of a stream as NewLineReader reads a buffer's, holding only
// the line at hand: a tar-split can be indexed without being held whole. A Line's Payload is
// valid only until the next call of Next.
func NewLineReaderFrom(r io.Reader, maxLines int) *LineReader {
	return &LineReader{br: bufio.NewReaderSize(r, 64<<10), maxLines: maxLines}
}

// Next returns the next non-blank line, io.EOF after the last, or an error wrapping
// errdefs.ErrInvalid past the line bound; a line that is no tar-split entry is an error too.
func (u *LineReader) Next() (Line, error) {
	var text []byte
	var err error
	if u.br != nil {
		text, err = u.nextStreamed()
	} else {
		text, err = u.nextBuffered()
	}
	if err != nil {
		return Line{}, err
	}
	u.line++
	l, err := DecodeLine(text)
	if err != nil {
		return Line{}, fmt.Errorf("line %d: %w", u.line, err)
	}
	return l, nil
}

func (u *LineReader) overBound() error {
	if u.lines+u.line >= u.maxLines {
		return fmt.Errorf("more than %d tar-split lines: %w", u.maxLines, errdefs.ErrInvalid)
	}
	return nil
}

// nextBuffered returns the text of the next non-blank line of the buffer.
func (u *LineReader) nextBuffered() ([]byte, error) {
	for len(u.rest) > 0 && (u.rest[0] == '\n' || u.rest[0] == ' ' || u.rest[0] == '\t' || u.rest[0] == '\r') {
		if u.rest[0] == '\n' {
			u.lines++
		}
		u.rest = u.rest[1:]
	}
	if err := u.overBound(); err != nil {
		return nil, err
	}
	if len(u.rest) == 0 {
		return nil, io.EOF
	}
	text := u.rest
	if i := bytes.IndexByte(text, '\n'); i >= 0 {
		text, u.rest = text[:i], text[i+1:]
	} else {
		u.rest = nil
	}
	return text, nil
}

// nextStreamed is nextBuffered for a stream: blank lines count alike, and so does the bound.
func (u *LineReader) nextStreamed() ([]byte, error) {
	for {
		raw, nl, err := u.readRaw()
		if err == io.EOF {
			if err := u.overBound(); err != nil {
				return nil, err
			}
			return nil, io.EOF
		}
		if err != nil {
			return nil, err
		}
		text := bytes.TrimLeft(raw, " \t\r")
		if len(text) > 0 {
			return text, u.overBound()
		}
		if nl {
			u.lines++
		}
		if err := u.overBound(); err != nil {
			return nil, err
		}
	}
}

// readRaw reads one line without its newline (nl says there was one); io.EOF when none is left.
func (u *LineReader) readRaw() (line []byte, nl bool, err error) {
	b, err := u.br.ReadSlice('\n')
	if err == bufio.ErrBufferFull {
		u.long = append(u.long[:0], b...)
		for err == bufio.ErrBufferFull && len(u.long) <= MaxStreamLine {
			b, err = u.br.ReadSlice('\n')
			u.long = append(u.long, b...)
		}
		if len(u.long) > MaxStreamLine {
			return nil, false, fmt.Errorf("tar-split line over %d bytes: %w", MaxStreamLine, errdefs.ErrInvalid)
		}
		b = u.long
	}
	switch {
	case err == io.EOF && len(b) == 0:
		return nil, false, io.EOF
	case err == io.EOF:
		return b, false, nil
	case err != nil:
		return nil, false, err
	}
	return b[:len(b)-1], true, nil
}

// DecodeLine decodes one tar-split JSON line. Lines as storage's packer writes them (fields in
// its order, names without escapes) take a direct path; any other valid JSON still decodes,
// through encoding/json.
func DecodeLine(text []byte) (Line, error) {
	if l, ok := parseLine(text); ok {
		return l, nil
	}
	var e storage.Entry
	if err := json.Unmarshal(text, &e); err != nil {
		return Line{}, err
	}
	l := Line{Type: e.Type, Name: e.GetName(), Size: e.Size, Position: e.Position}
	if e.Payload != nil {
		l.Payload = base64.StdEncoding.AppendEncode([]byte{}, e.Payload)
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

// lineScanner reads a line in the packer's shape from left to right.
type lineScanner struct{ p []byte }

// take consumes prefix if the rest starts with it.
func (sc *lineScanner) take(prefix string) bool {
	if len(sc.p) >= len(prefix) && string(sc.p[:len(prefix)]) == prefix {
		sc.p = sc.p[len(prefix):]
		return true
	}
	return false
}

// number consumes a non-negative JSON integer of at most 18 digits (so it fits an int64).
func (sc *lineScanner) number() (int64, bool) {
	p := sc.p
	i := 0
	for i < len(p) && i < 18 && p[i] >= '0' && p[i] <= '9' {
		i++
	}
	if i == 0 || (i > 1 && p[0] == '0') {
		return 0, false
	}
	n, err := strconv.ParseInt(string(p[:i]), 10, 64)
	sc.p = p[i:]
	return n, err == nil
}

// str consumes a string's text up to its closing quote: only characters JSON takes literally.
func (sc *lineScanner) str() ([]byte, bool) {
	end := bytes.IndexByte(sc.p, '"')
	if end < 0 {
		return nil, false
	}
	s := sc.p[:end]
	if bytes.IndexByte(s, '\\') >= 0 {
		return nil, false
	}
	sc.p = sc.p[end+1:]
	return s, true
}

// payload consumes `,"payload":null` or `,"payload":"B64"`, returning the base64 text.
func (sc *lineScanner) payload() ([]byte, bool) {
	if sc.take(`,"payload":null`) {
		return nil, true
	}
	if !sc.take(`,"payload":"`) {
		return nil, false
	}
	s, ok := sc.str()
	// base64 decoders skip a raw '\r', which JSON does not allow in a string.
	if !ok || len(s)%4 != 0 || bytes.IndexByte(s, '\r') >= 0 {
		return nil, false
	}
	// A payload is copied into a predicted stream as it is, so it must be base64 text; the check
	// runs over the (short) tail only: segments are tested where they are decoded.
	if len(s) <= 16 {
		for _, c := range s {
			if !b64[c] {
				return nil, false
			}
		}
	}
	return s, true
}

// parseLine parses `{"type":T[,"name":"N"][,"size":S],"payload":null|"B64","position":P}`, the
// packer's shape, by prefixes: faster than matching keys in any order. It reports false for
// anything else, including strings with escapes, invalid UTF-8 and payloads that are not base64
// text, whose handling encoding/json defines.
func parseLine(p []byte) (Line, bool) {
	var l Line
	sc := lineScanner{p}
	if !sc.take(`{"type":`) {
		return l, false
	}
	t, ok := sc.number()
	if !ok || t > 1<<20 {
		return l, false
	}
	l.Type = storage.Type(t)
	if sc.take(`,"name":"`) {
		s, ok := sc.str()
		if !ok || !utf8.Valid(s) || bytes.ContainsFunc(s, func(r rune) bool { return r < 0x20 }) {
			return l, false
		}
		l.Name = string(s)
	}
	if sc.take(`,"size":`) {
		if l.Size, ok = sc.number(); !ok {
			return l, false
		}
	}
	if l.Payload, ok = sc.payload(); !ok || !sc.take(`,"position":`) {
		return l, false
	}
	pos, ok := sc.number()
	if !ok || !sc.take(`}`) || len(bytes.TrimRight(sc.p, " \t\r")) > 0 {
		return l, false
	}
	l.Position = int(pos)
	return l, true
}

// Packer writes tar-split JSON lines byte for byte as storage's JSON packer does, refusing
// duplicate paths as it does.
type Packer struct {
	buf  LineWriter
	pos  int
	seen PathSet
	tmp  []byte
}

// LineWriter is where a Packer writes: a bytes.Buffer or a bufio.Writer.
type LineWriter interface {
	io.Writer
	io.StringWriter
	io.ByteWriter
}

// NewPacker writes to buf; entries sizes its set of paths.
func NewPacker(buf LineWriter, entries int) *Packer {
	return &Packer{buf: buf, seen: make(PathSet, entries)}
}

// Segment64 writes a segment whose payload is given as base64 text.
func (p *Packer) Segment64(text []byte) {
	p.buf.WriteString(`{"type":2,"payload":"`)
	p.buf.Write(text)
	p.endLine(`"`)
}

// Segment writes a segment; b is not retained.
func (p *Packer) Segment(b []byte) {
	p.tmp = base64.StdEncoding.AppendEncode(p.tmp[:0], b)
	p.Segment64(p.tmp)
}

func (p *Packer) endLine(before string) {
	p.tmp = strconv.AppendInt(append(append(p.tmp[:0], before...), `,"position":`...), int64(p.pos), 10)
	p.tmp = append(p.tmp, "}\n"...)
	p.buf.Write(p.tmp)
	p.pos++
}

// File writes a file entry; payload is its CRC (nil for no content). A path written before
// is refused with storage.ErrDuplicatePath.
func (p *Packer) File(name string, size int64, payload []byte) error {
	if err := p.seen.Add(name); err != nil {
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

// PathSet holds the paths of a tar-split's file entries, cleaned as storage's packer cleans them.
type PathSet map[string]struct{}

// Add refuses a path seen before (storage.ErrDuplicatePath), as storage's packer does.
func (s PathSet) Add(name string) error {
	clean := filepath.Clean(name)
	if _, dup := s[clean]; dup {
		return fmt.Errorf("%q: %w", name, storage.ErrDuplicatePath)
	}
	s[clean] = struct{}{}
	return nil
}

// WriteTarSplit writes decoded tar-split entries (DecodeTarSplit's, or a prediction's) as the
// tar-split JSON stream, byte for byte as storage's packer writes it.
func WriteTarSplit(w io.Writer, entries []storage.Entry) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	p := NewPacker(bw, len(entries)/2)
	for i := range entries {
		e := &entries[i]
		switch e.Type {
		case storage.SegmentType:
			p.Segment(e.Payload)
		case storage.FileType:
			if err := p.File(e.GetName(), e.Size, e.Payload); err != nil {
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
