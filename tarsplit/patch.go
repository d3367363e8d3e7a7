package tarsplit

import (
	"archive/tar"
	"bytes"
	"strconv"
	"strings"
	"time"
)

// Patching: for tar writers other than Go's (GNU tar leaves device fields empty, names PAX
// headers "dir/PaxHeaders/base", orders PAX records its own way…), a changed entry's headers are
// the template entry's with the fields rewritten in place. patchHeaders trusts a layout only if
// rewriting the template with its own header reproduces it byte for byte.

// Offsets of the fields of a tar header block.
const (
	blockSize                = 512
	offName, lenName         = 0, 100
	offMode, offUID, offGID  = 100, 108, 116
	lenOctal8                = 8
	offSize, offMtime        = 124, 136
	lenOctal12               = 12
	offChksum, lenChksum     = 148, 8
	offFlag                  = 156
	offLink, lenLink         = 157, 100
	offUname, offGname       = 265, 297
	lenOwnerName             = 32
	offDevmajor, offDevminor = 329, 337
)

// patchHeaders writes h in the layout of tmpl, the raw headers of a known entry that read as th:
// a header block, possibly after GNU long-name blocks (kept if the names did not change) or one
// PAX extended header (its records rewritten in their order).
func patchHeaders(tmpl []byte, th, h *tar.Header) ([]byte, bool) {
	again, ok := patchLayout(tmpl, th, th)
	if !ok || !bytes.Equal(again, tmpl) {
		return nil, false
	}
	return patchLayout(tmpl, th, h)
}

func patchLayout(tmpl []byte, th, h *tar.Header) ([]byte, bool) {
	if len(tmpl) < blockSize || len(tmpl)%blockSize != 0 {
		return nil, false
	}
	ext, main := tmpl[:len(tmpl)-blockSize], tmpl[len(tmpl)-blockSize:]
	var out []byte
	pax := false
	switch kind, ok := extKind(ext); {
	case !ok:
		return nil, false
	case kind == 0:
	case kind == tar.TypeGNULongName || kind == tar.TypeGNULongLink:
		if h.Name != th.Name || h.Linkname != th.Linkname {
			return nil, false // the long names are in the extension blocks
		}
		out = append(out, ext...)
	case kind == tar.TypeXHeader:
		x, ok := patchPAX(ext, main, th, h)
		if !ok {
			return nil, false
		}
		out, pax = x, true
	default:
		return nil, false
	}
	blk := bytes.Clone(main)
	if !writeFields(blk, main, th, h, pax) {
		return nil, false
	}
	return append(out, blk...), true
}

// extKind says what extension headers ext holds: none (0), GNU long names only (L or K, the
// first's type), or a single PAX header (x).
func extKind(ext []byte) (byte, bool) {
	var kind byte
	for off := 0; off < len(ext); {
		blk := ext[off : off+blockSize]
		size, ok := parseOctal(blk[offSize : offSize+lenOctal12])
		if !ok || size > int64(len(ext)) {
			return 0, false
		}
		flag := blk[offFlag]
		switch {
		case flag == tar.TypeXHeader && off == 0:
		case (flag == tar.TypeGNULongName || flag == tar.TypeGNULongLink) && (kind == 0 || kind != tar.TypeXHeader):
		default:
			return 0, false
		}
		if kind == 0 {
			kind = flag
		}
		off += blockSize + int((size+blockSize-1)/blockSize*blockSize)
		if off > len(ext) || (kind == tar.TypeXHeader && off != len(ext)) {
			return 0, false
		}
	}
	return kind, true
}

// parseOctal reads a NUL- or space-terminated octal field.
func parseOctal(b []byte) (int64, bool) {
	s := strings.TrimRight(strings.TrimLeft(string(b), " "), " \x00")
	if s == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(s, 8, 64)
	return n, err == nil && n >= 0
}

// patchPAX rewrites a PAX extended header (block, records) for h: the same keys in the same
// order with h's values, the block's size, and its time and name where they follow the entry's.
func patchPAX(ext, main []byte, th, h *tar.Header) ([]byte, bool) {
	xblk := ext[:blockSize]
	size, _ := parseOctal(xblk[offSize : offSize+lenOctal12])
	recs, ok := parsePAX(ext[blockSize : blockSize+int(size)])
	if !ok {
		return nil, false
	}
	// GNU tar writes an mtime record only for a time with a fraction of a second, first. Where
	// the template follows that rule, so does the entry.
	hasMtime := len(recs) > 0 && recs[0][0] == "mtime"
	if hasMtime == (th.ModTime.Nanosecond() != 0) {
		needs := h.ModTime.Nanosecond() != 0
		switch {
		case hasMtime && !needs:
			recs = recs[1:]
		case !hasMtime && needs:
			recs = append([][2]string{{"mtime", ""}}, recs...)
		}
	}
	var data []byte
	for _, kv := range recs {
		v, ok := paxValue(kv[0], h)
		if !ok {
			return nil, false
		}
		data = append(data, paxRecord(kv[0], v)...)
	}
	blk := bytes.Clone(xblk)
	if !octal(blk, offSize, lenOctal12, int64(len(data))) {
		return nil, false
	}
	// GNU tar dates the extended header like its entry.
	if bytes.Equal(xblk[offMtime:offMtime+lenOctal12], main[offMtime:offMtime+lenOctal12]) &&
		!octal(blk, offMtime, lenOctal12, h.ModTime.Unix()) {
		return nil, false
	}
	if h.Name != th.Name {
		name := string(bytes.TrimRight(xblk[offName:offName+lenName], "\x00"))
		if name != gnuPAXName(th.Name) || !setString(blk, offName, lenName, gnuPAXName(h.Name)) {
			return nil, false
		}
	}
	if !checksum(blk) {
		return nil, false
	}
	out := append(blk, data...)
	return append(out, make([]byte, padding(int64(len(data))))...), true
}

// gnuPAXName is the name GNU tar gives the PAX header of name ("%d/PaxHeaders/%f").
func gnuPAXName(name string) string {
	name = strings.TrimSuffix(name, "/")
	dir, base := ".", name
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		dir, base = name[:i], name[i+1:]
	}
	return dir + "/PaxHeaders/" + base
}

// parsePAX splits PAX records ("LEN key=value\n") in order.
func parsePAX(data []byte) ([][2]string, bool) {
	var recs [][2]string
	for len(data) > 0 {
		sp := bytes.IndexByte(data, ' ')
		if sp <= 0 {
			return nil, false
		}
		n, err := strconv.Atoi(string(data[:sp]))
		if err != nil || n <= sp+1 || n > len(data) || data[n-1] != '\n' {
			return nil, false
		}
		key, value, ok := strings.Cut(string(data[sp+1:n-1]), "=")
		if !ok {
			return nil, false
		}
		recs = append(recs, [2]string{key, value})
		data = data[n:]
	}
	return recs, true
}

// paxRecord formats one record; its length counts its own digits.
func paxRecord(key, value string) string {
	body := " " + key + "=" + value + "\n"
	n := len(body)
	for n != len(strconv.Itoa(n))+len(body) {
		n = len(strconv.Itoa(n)) + len(body)
	}
	return strconv.Itoa(n) + body
}

// paxValue is the value h gives the PAX record key.
func paxValue(key string, h *tar.Header) (string, bool) {
	switch key {
	case "mtime":
		return paxTime(h.ModTime)
	case "atime":
		return paxTime(h.AccessTime)
	case "ctime":
		return paxTime(h.ChangeTime)
	case "path":
		return h.Name, true
	case "linkpath":
		return h.Linkname, true
	case "size":
		return strconv.FormatInt(h.Size, 10), true
	case "uid":
		return strconv.Itoa(h.Uid), true
	case "gid":
		return strconv.Itoa(h.Gid), true
	case "uname":
		return h.Uname, true
	case "gname":
		return h.Gname, true
	}
	v, ok := h.PAXRecords[key]
	return v, ok
}

// paxTime formats seconds and nanoseconds without trailing zeros, as GNU tar and Go do.
func paxTime(t time.Time) (string, bool) {
	if t.IsZero() || t.Unix() < 0 {
		return "", false
	}
	s := strconv.FormatInt(t.Unix(), 10)
	if ns := t.Nanosecond(); ns != 0 {
		s += "." + strings.TrimRight(strconv.FormatInt(int64(ns)+1e9, 10)[1:], "0")
	}
	return s, true
}

// writeFields writes h's fields into blk, a copy of the template block tmpl that reads as th:
// octal numbers zero-padded with a trailing NUL, names NUL-padded (kept as they are where h has
// th's, so truncated or split long names survive), the checksum as six octal digits, NUL, space.
// With pax, times and records are in the extended header and only whole seconds are written here.
func writeFields(blk, tmpl []byte, th, h *tar.Header, pax bool) bool {
	if !pax && (len(h.PAXRecords) > 0 || !h.AccessTime.IsZero() || !h.ChangeTime.IsZero()) {
		return false
	}
	keep := func(changed bool, off, n int, s string) bool { return !changed || setString(blk, off, n, s) }
	ok := keep(h.Name != th.Name, offName, lenName, h.Name) &&
		keep(h.Linkname != th.Linkname, offLink, lenLink, h.Linkname) &&
		keep(h.Uname != th.Uname, offUname, lenOwnerName, h.Uname) &&
		keep(h.Gname != th.Gname, offGname, lenOwnerName, h.Gname) &&
		octal(blk, offMode, lenOctal8, h.Mode) && octal(blk, offUID, lenOctal8, int64(h.Uid)) &&
		octal(blk, offGID, lenOctal8, int64(h.Gid)) && octal(blk, offSize, lenOctal12, h.Size) &&
		octal(blk, offMtime, lenOctal12, h.ModTime.Unix())
	if !ok {
		return false
	}
	if h.Typeflag == tar.TypeChar || h.Typeflag == tar.TypeBlock {
		if !octal(blk, offDevmajor, lenOctal8, h.Devmajor) || !octal(blk, offDevminor, lenOctal8, h.Devminor) {
			return false
		}
	} else if h.Devmajor != 0 || h.Devminor != 0 {
		return false
	}
	if h.Typeflag == th.Typeflag {
		blk[offFlag] = tmpl[offFlag] // e.g. an old NUL type for a regular file
	} else {
		blk[offFlag] = h.Typeflag
	}
	return checksum(blk)
}

func setString(blk []byte, off, n int, s string) bool {
	if len(s) > n || strings.IndexByte(s, 0) >= 0 {
		return false
	}
	clear(blk[off : off+n])
	copy(blk[off:], s)
	return true
}

func octal(blk []byte, off, n int, v int64) bool {
	s := strconv.FormatInt(v, 8)
	if v < 0 || len(s) > n-1 {
		return false
	}
	copy(blk[off:], strings.Repeat("0", n-1-len(s))+s)
	blk[off+n-1] = 0
	return true
}

// checksum sets the header checksum: the byte sum with the field as spaces.
func checksum(blk []byte) bool {
	copy(blk[offChksum:offChksum+lenChksum], "        ")
	var sum int64
	for _, c := range blk[:blockSize] {
		sum += int64(c)
	}
	if !octal(blk, offChksum, lenChksum-1, sum) {
		return false
	}
	blk[offChksum+lenChksum-1] = ' '
	return true
}
