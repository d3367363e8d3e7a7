package tarsplit

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"

	"github.com/vbatts/tar-split/tar/storage"
)

// decodeLine decodes one tar-split JSON line. Lines exactly as storage's packer writes them
// (fields in its order, names without escapes) take a direct path several times faster than
// encoding/json; any other valid JSON still decodes, through encoding/json.
func decodeLine(line []byte) (*storage.Entry, error) {
	if e, ok := decodeFast(line); ok {
		return e, nil
	}
	var e storage.Entry
	if err := json.Unmarshal(line, &e); err != nil {
		return nil, err
	}
	return &e, nil
}

// decodeFast parses `{"type":T[,"name":"N"][,"size":S],"payload":null|"B64","position":P}`.
// It reports false for anything else, including strings with escapes and invalid UTF-8, whose
// decoding encoding/json defines.
func decodeFast(p []byte) (*storage.Entry, bool) {
	var e storage.Entry
	take := func(prefix string) bool {
		if bytes.HasPrefix(p, []byte(prefix)) {
			p = p[len(prefix):]
			return true
		}
		return false
	}
	number := func() (int64, bool) {
		i := 0
		for i < len(p) && i < 19 && p[i] >= '0' && p[i] <= '9' {
			i++
		}
		if i == 0 || (i > 1 && p[0] == '0') {
			return 0, false
		}
		n, err := strconv.ParseInt(string(p[:i]), 10, 64)
		if err != nil {
			return 0, false
		}
		p = p[i:]
		return n, true
	}
	str := func() ([]byte, bool) {
		end := bytes.IndexByte(p, '"')
		if end < 0 {
			return nil, false
		}
		s := p[:end]
		for _, c := range s {
			if c == '\\' || c < 0x20 {
				return nil, false
			}
		}
		p = p[end+1:]
		return s, true
	}
	if !take(`{"type":`) {
		return nil, false
	}
	t, ok := number()
	if !ok || t > 1<<30 {
		return nil, false
	}
	e.Type = storage.Type(t)
	if take(`,"name":"`) {
		s, ok := str()
		if !ok || !utf8.Valid(s) {
			return nil, false
		}
		e.Name = string(s)
	}
	if take(`,"size":`) {
		if e.Size, ok = number(); !ok {
			return nil, false
		}
	}
	switch {
	case take(`,"payload":null`):
	case take(`,"payload":"`):
		s, ok := str()
		if !ok {
			return nil, false
		}
		e.Payload = make([]byte, base64.StdEncoding.DecodedLen(len(s)))
		n, err := base64.StdEncoding.Decode(e.Payload, s)
		if err != nil {
			return nil, false
		}
		e.Payload = e.Payload[:n]
	default:
		return nil, false
	}
	if !take(`,"position":`) {
		return nil, false
	}
	pos, ok := number()
	if !ok || pos > 1<<40 {
		return nil, false
	}
	e.Position = int(pos)
	if !take(`}`) || len(bytes.TrimRight(p, " \t\r")) > 0 {
		return nil, false
	}
	return &e, true
}
