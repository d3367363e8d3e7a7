package tarstream

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/vbatts/tar-split/tar/storage"

	"github.com/kura-oci/kura/errdefs"
)

// MaxTarSplitLines bounds a tar-split's lines, empty and whitespace lines included: a hostile
// stream of minimal lines would otherwise cost hundreds of bytes decoded per byte of input. A
// layer of chunked.MaxTOCEntries entries has about two lines per entry (header segment, file),
// so every layer the store records reads back.
const MaxTarSplitLines = 4 << 20

// DecodeTarSplit decodes a whole tar-split JSON stream (one storage.Entry per line, as tar-split's
// packer writes it), refusing more than maxLines lines, empty ones included (tar-split's own
// reader skips them, but each costs a decoder step): they are counted before anything is
// allocated for them. Lines in the packer's own shape take a fast path, about ten times quicker
// than encoding/json; any other line is decoded by encoding/json, so the result is what
// tar-split's unpacker gives, except that a line must hold exactly one JSON value and duplicate
// names are not rejected here (chunked.CheckTarSplit does that against the TOC). Segment payloads
// and CRCs share one allocation.
func DecodeTarSplit(b []byte, maxLines int) ([]storage.Entry, error) {
	lines := bytes.Count(b, []byte{'\n'})
	if len(b) > 0 && b[len(b)-1] != '\n' {
		lines++
	}
	if lines > maxLines {
		return nil, fmt.Errorf("tar-split has more than %d entries for its size: %w", maxLines, errdefs.ErrInvalid)
	}
	entries := make([]storage.Entry, 0, lines)
	slab := make([]byte, 0, base64.StdEncoding.DecodedLen(len(b)))
	for n := 1; len(b) > 0; n++ {
		line := b
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			line, b = b[:i], b[i+1:]
		} else {
			b = nil
		}
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var e storage.Entry
		if !decodeTarSplitLine(line, &e, &slab) {
			e = storage.Entry{}
			if err := json.Unmarshal(line, &e); err != nil {
				return nil, fmt.Errorf("tar-split line %d: %w: %v", n, errdefs.ErrInvalid, err)
			}
		}
		entries = append(entries, e)
	}
	return entries, nil
}

// decodeTarSplitLine decodes a line of the form the packer writes:
// {"type":1,"name":"a/b","size":5,"payload":"…","position":3}. It returns false, having decoded
// nothing that matters, for anything else (escapes, other keys, whitespace, …), which then goes
// to encoding/json.
func decodeTarSplitLine(line []byte, e *storage.Entry, slab *[]byte) bool {
	s := line
	if len(s) < 2 || s[0] != '{' || s[len(s)-1] != '}' {
		return false
	}
	s = s[1 : len(s)-1]
	for len(s) > 0 {
		key, rest, ok := jsonSimpleString(s)
		if !ok || len(rest) == 0 || rest[0] != ':' {
			return false
		}
		s = rest[1:]
		var val []byte
		quoted := len(s) > 0 && s[0] == '"'
		if quoted && (string(key) == "payload" || string(key) == "name_raw") {
			// base64: the decoder rejects every byte JSON would have to escape, except the
			// line breaks it skips, and a raw '\n' cannot be inside a line.
			end := bytes.IndexByte(s[1:], '"')
			if end < 0 || bytes.IndexByte(s[1:1+end], '\r') >= 0 {
				return false
			}
			val, s = s[1:1+end], s[2+end:]
		} else if quoted {
			v, rest, ok := jsonSimpleString(s)
			if !ok {
				return false
			}
			val, s = v, rest
		} else {
			i := 0
			for i < len(s) && s[i] != ',' {
				i++
			}
			val, s = s[:i], s[i:]
		}
		switch string(key) {
		case "type":
			n, ok := jsonInt(val, quoted)
			if !ok {
				return false
			}
			e.Type = storage.Type(n)
		case "position":
			n, ok := jsonInt(val, quoted)
			if !ok {
				return false
			}
			e.Position = int(n)
		case "size":
			n, ok := jsonInt(val, quoted)
			if !ok {
				return false
			}
			e.Size = n
		case "name":
			if !quoted || !utf8.Valid(val) {
				return false
			}
			e.Name = string(val)
		case "payload", "name_raw":
			var p []byte
			if !quoted {
				if string(val) != "null" {
					return false
				}
			} else {
				start := len(*slab)
				if cap(*slab)-start < base64.StdEncoding.DecodedLen(len(val)) {
					return false
				}
				dst := (*slab)[start : start+base64.StdEncoding.DecodedLen(len(val))]
				n, err := base64.StdEncoding.Decode(dst, val)
				if err != nil {
					return false
				}
				*slab = (*slab)[:start+n]
				p = (*slab)[start : start+n : start+n]
			}
			if string(key) == "payload" {
				e.Payload = p
			} else {
				e.NameRaw = p
			}
		default:
			return false
		}
		if len(s) > 0 {
			if s[0] != ',' {
				return false
			}
			s = s[1:]
			if len(s) == 0 {
				return false
			}
		}
	}
	return true
}

// jsonSimpleString splits a leading JSON string without escapes or control characters off s,
// returning its contents (without quotes) and the rest.
func jsonSimpleString(s []byte) (val, rest []byte, ok bool) {
	if len(s) == 0 || s[0] != '"' {
		return nil, nil, false
	}
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"':
			return s[1:i:i], s[i+1:], true
		case c == '\\' || c < 0x20:
			return nil, nil, false
		}
	}
	return nil, nil, false
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
