package chunked

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// decodeTOCFast decodes TOC JSON written the way TOC writers write it (the known keys in their
// exact case, each at most once, strings without escapes) several times faster than
// encoding/json. For anything else it reports false and ParseTOC falls back to encoding/json;
// when it reports true the result is what encoding/json gives (FuzzParseTOCFast checks this).
func decodeTOCFast(b []byte) (*TOC, bool) {
	toc, ok, _ := decodeTOCFastLimit(b, MaxTOCEntries)
	return toc, ok
}

// decodeTOCFastLimit is decodeTOCFast refusing more than maxEntries entries: over reports
// that it stopped there (the caller must not fall back to encoding/json, which would decode
// them all).
func decodeTOCFastLimit(b []byte, maxEntries int) (toc *TOC, ok, over bool) {
	d := tocDecoder{b: b, max: maxEntries}
	toc, ok = d.toc()
	if !ok {
		return nil, false, d.over
	}
	d.ws()
	return toc, d.i == len(d.b), false
}

type tocDecoder struct {
	b    []byte
	i    int
	max  int  // entries allowed
	over bool // more entries than max: stop, and do not try another decoder
}

func (d *tocDecoder) ws() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// consume skips whitespace and the byte c, if it is next.
func (d *tocDecoder) consume(c byte) bool {
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == c {
		d.i++
		return true
	}
	return false
}

func (d *tocDecoder) null() bool {
	d.ws()
	if len(d.b)-d.i >= 4 && string(d.b[d.i:d.i+4]) == "null" {
		d.i += 4
		return true
	}
	return false
}

// str reads a string without escapes or control characters, in valid UTF-8; it returns the
// contents and, for time values, the quoted form.
func (d *tocDecoder) str() (val, quoted []byte, ok bool) {
	d.ws()
	if d.i >= len(d.b) || d.b[d.i] != '"' {
		return nil, nil, false
	}
	start := d.i
	ascii := true
	for j := d.i + 1; j < len(d.b); j++ {
		c := d.b[j]
		switch {
		case c == '"':
			val = d.b[d.i+1 : j]
			if !ascii && !utf8.Valid(val) {
				return nil, nil, false
			}
			d.i = j + 1
			return val, d.b[start:d.i], true
		case c == '\\' || c < 0x20:
			return nil, nil, false
		case c >= 0x80:
			ascii = false
		}
	}
	return nil, nil, false
}

// int reads an integer as encoding/json reads one into an int64 field (null leaves it zero).
func (d *tocDecoder) int() (int64, bool) {
	if d.null() {
		return 0, true
	}
	start := d.i
	for d.i < len(d.b) && (d.b[d.i] == '-' || d.b[d.i] >= '0' && d.b[d.i] <= '9') {
		d.i++
	}
	return jsonInt(d.b[start:d.i], false)
}

// string reads a string field (null leaves it empty), sharing the common type names.
func (d *tocDecoder) string() (string, bool) {
	if d.null() {
		return "", true
	}
	v, _, ok := d.str()
	if !ok {
		return "", false
	}
	switch string(v) {
	case TypeReg:
		return TypeReg, true
	case TypeChunk:
		return TypeChunk, true
	case TypeDir:
		return TypeDir, true
	case TypeSymlink:
		return TypeSymlink, true
	case TypeLink:
		return TypeLink, true
	}
	return string(v), true
}

func (d *tocDecoder) time() (*time.Time, bool) {
	if d.null() {
		return nil, true
	}
	_, q, ok := d.str()
	if !ok {
		return nil, false
	}
	t := new(time.Time)
	if t.UnmarshalJSON(q) != nil {
		return nil, false
	}
	return t, true
}

// object calls field for each key of an object, failing on a repeated key (encoding/json would
// merge or overwrite; the fallback gets it right).
func (d *tocDecoder) object(field func(key []byte) bool) bool {
	if !d.consume('{') {
		return false
	}
	if d.consume('}') {
		return true
	}
	for {
		k, _, ok := d.str()
		if !ok || !d.consume(':') || !field(k) {
			return false
		}
		if d.consume('}') {
			return true
		}
		if !d.consume(',') {
			return false
		}
	}
}

func (d *tocDecoder) toc() (*TOC, bool) {
	var toc TOC
	var seen uint8
	once := func(bit uint8) bool {
		if seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	}
	ok := d.object(func(k []byte) bool {
		switch string(k) {
		case "version":
			n, ok := d.int()
			toc.Version = int(n)
			return ok && once(1)
		case "entries":
			return once(2) && d.entries(&toc)
		case "tarSplitDigest":
			s, ok := d.string()
			toc.TarSplitDigest = s
			return ok && once(4)
		}
		return false
	})
	return &toc, ok
}

func (d *tocDecoder) entries(toc *TOC) bool {
	if d.null() {
		return true
	}
	if !d.consume('[') {
		return false
	}
	toc.Entries = make([]Entry, 0, min(len(d.b)/200, d.max))
	if d.consume(']') {
		return true
	}
	for {
		if len(toc.Entries) >= d.max {
			d.over = true
			return false
		}
		toc.Entries = append(toc.Entries, Entry{})
		if !d.entry(&toc.Entries[len(toc.Entries)-1]) {
			return false
		}
		if d.consume(']') {
			return true
		}
		if !d.consume(',') {
			return false
		}
	}
}

func (d *tocDecoder) entry(e *Entry) bool {
	var seen uint32
	return d.object(func(k []byte) bool {
		var bit uint32
		var ok bool
		var n int64
		switch string(k) {
		case "type":
			bit = 1 << 0
			e.Type, ok = d.string()
		case "name":
			bit = 1 << 1
			e.Name, ok = d.string()
		case "linkName":
			bit = 1 << 2
			e.Linkname, ok = d.string()
		case "mode":
			bit = 1 << 3
			e.Mode, ok = d.int()
		case "size":
			bit = 1 << 4
			e.Size, ok = d.int()
		case "uid":
			bit = 1 << 5
			n, ok = d.int()
			e.UID = int(n)
		case "gid":
			bit = 1 << 6
			n, ok = d.int()
			e.GID = int(n)
		case "modtime":
			bit = 1 << 7
			e.ModTime, ok = d.time()
		case "accesstime":
			bit = 1 << 8
			e.AccessTime, ok = d.time()
		case "changetime":
			bit = 1 << 9
			e.ChangeTime, ok = d.time()
		case "devMajor":
			bit = 1 << 10
			e.Devmajor, ok = d.int()
		case "devMinor":
			bit = 1 << 11
			e.Devminor, ok = d.int()
		case "xattrs":
			bit = 1 << 12
			ok = d.xattrs(e)
		case "digest":
			bit = 1 << 13
			e.Digest, ok = d.string()
		case "offset":
			bit = 1 << 14
			e.Offset, ok = d.int()
		case "endOffset":
			bit = 1 << 15
			e.EndOffset, ok = d.int()
		case "chunkSize":
			bit = 1 << 16
			e.ChunkSize, ok = d.int()
		case "chunkOffset":
			bit = 1 << 17
			e.ChunkOffset, ok = d.int()
		case "chunkDigest":
			bit = 1 << 18
			e.ChunkDigest, ok = d.string()
		case "chunkType":
			bit = 1 << 19
			e.ChunkType, ok = d.string()
		default:
			return false
		}
		if !ok || seen&bit != 0 {
			return false
		}
		seen |= bit
		return true
	})
}

func (d *tocDecoder) xattrs(e *Entry) bool {
	if d.null() {
		return true
	}
	m := map[string]string{}
	ok := d.object(func(k []byte) bool {
		key := string(k)
		if _, dup := m[key]; dup {
			return false
		}
		v, ok := d.string()
		m[key] = v
		return ok
	})
	e.Xattrs = m
	return ok
}

// jsonInt parses an unquoted JSON integer as encoding/json would into an int64 field.
func jsonInt(val []byte, quoted bool) (int64, bool) {
	if quoted || len(val) == 0 {
		return 0, false
	}
	digits := val
	if digits[0] == '-' {
		digits = digits[1:]
	}
	if len(digits) == 0 || len(digits) > 1 && digits[0] == '0' {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(string(val), 10, 64)
	return n, err == nil
}
