package tarsplit

import (
	"archive/tar"
	"strconv"
	"strings"
	"time"
)

// Go's tar.Writer.WriteHeader decides a header's format through a general check of every field
// (allowedFormats) that allocates and dominated the profile of a predicted tar-split. Most
// headers a layer holds are plain USTAR, for which the writer's output is fixed: ustarHeader
// writes those bytes directly and leaves everything else to archive/tar. It is checked against
// archive/tar byte for byte (TestUSTARMatchesGo, FuzzUSTARMatchesGo).

// USTAR field limits, as archive/tar lays out the header block.
const (
	ustarNameSize   = 100
	ustarPrefixSize = 155
	ustarOwnerSize  = 32
)

// ustarHeader returns the header block Go's archive/tar writes for hdr with the given format
// choice, when the writer would choose USTAR for it; ok is false when the writer might do
// anything else (PAX or GNU records, long or non-ASCII names, sub-second or extra times…).
func ustarHeader(hdr *tar.Header, format tar.Format) (blk []byte, ok bool) {
	mtime, ok := ustarModTime(hdr, format)
	if !ok || !ustarFields(hdr) {
		return nil, false
	}
	name, prefix := hdr.Name, ""
	if len(name) > ustarNameSize {
		if prefix, name, ok = splitUSTARPath(name); !ok {
			return nil, false
		}
	}
	b := make([]byte, 512)
	copy(b[0:100], name)
	putOctal(b[100:108], hdr.Mode)
	putOctal(b[108:116], int64(hdr.Uid))
	putOctal(b[116:124], int64(hdr.Gid))
	putOctal(b[124:136], hdr.Size)
	putOctal(b[136:148], mtime)
	b[156] = hdr.Typeflag
	copy(b[157:257], hdr.Linkname)
	copy(b[257:265], "ustar\x0000")
	copy(b[265:297], hdr.Uname)
	copy(b[297:329], hdr.Gname)
	putOctal(b[329:337], hdr.Devmajor)
	putOctal(b[337:345], hdr.Devminor)
	copy(b[345:500], prefix)
	sum := int64(0)
	for i, c := range b {
		if i >= 148 && i < 156 {
			c = ' '
		}
		sum += int64(c)
	}
	putOctal(b[148:155], sum)
	b[155] = ' '
	return b, true
}

// ustarModTime gives the mtime the writer records, if with this format choice it writes USTAR:
// without a format it rounds the mtime to seconds and drops the other times; with one, any
// other time or a sub-second mtime makes it prefer PAX (or truncate), which is left to it.
func ustarModTime(hdr *tar.Header, format tar.Format) (int64, bool) {
	mt := hdr.ModTime
	switch format {
	case tar.FormatUnknown:
		mt = mt.Round(time.Second)
	case tar.FormatUSTAR, tar.FormatPAX:
		if !hdr.AccessTime.IsZero() || !hdr.ChangeTime.IsZero() || mt.Nanosecond() != 0 {
			return 0, false
		}
	default:
		return 0, false
	}
	if mt.IsZero() {
		mt = time.Unix(0, 0)
	}
	return mt.Unix(), fitsOctal(12, mt.Unix())
}

// ustarFields reports whether every field but the times fits a USTAR header as the writer
// checks them, and no record asks for PAX.
func ustarFields(hdr *tar.Header) bool {
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		if strings.HasSuffix(hdr.Name, "/") {
			return false // the writer refuses these
		}
	case tar.TypeLink, tar.TypeSymlink, tar.TypeDir:
	default:
		return false
	}
	// Xattrs is deprecated, but the writer still turns it into PAX records.
	if len(hdr.PAXRecords) != 0 || len(hdr.Xattrs) != 0 {
		return false
	}
	return asciiFits(hdr.Name, len(hdr.Name)) && asciiFits(hdr.Linkname, ustarNameSize) &&
		asciiFits(hdr.Uname, ustarOwnerSize) && asciiFits(hdr.Gname, ustarOwnerSize) &&
		fitsOctal(8, hdr.Mode) && fitsOctal(8, int64(hdr.Uid)) && fitsOctal(8, int64(hdr.Gid)) &&
		fitsOctal(12, hdr.Size) && fitsOctal(8, hdr.Devmajor) && fitsOctal(8, hdr.Devminor)
}

// asciiFits reports whether s is at most n bytes of ASCII without NUL.
func asciiFits(s string, n int) bool {
	if len(s) > n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] == 0 || s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// fitsOctal reports whether x fits an n-byte octal field with its NUL (archive/tar's fitsInOctal).
func fitsOctal(n int, x int64) bool {
	return x >= 0 && x < 1<<(uint(n-1)*3)
}

// putOctal writes x as zero-padded octal in all but the last byte of b, which stays NUL.
func putOctal(b []byte, x int64) {
	var digits [24]byte
	s := strconv.AppendInt(digits[:0], x, 8)
	n := len(b) - 1 - len(s)
	for i := range n {
		b[i] = '0'
	}
	copy(b[n:], s)
}

// splitUSTARPath splits a long name into USTAR's prefix and name fields as archive/tar does.
func splitUSTARPath(name string) (prefix, suffix string, ok bool) {
	length := len(name)
	if length <= ustarNameSize || !asciiFits(name, length) {
		return "", "", false
	} else if length > ustarPrefixSize+1 {
		length = ustarPrefixSize + 1
	} else if name[length-1] == '/' {
		length--
	}
	i := strings.LastIndex(name[:length], "/")
	nlen, plen := len(name)-i-1, i
	if i <= 0 || nlen > ustarNameSize || nlen == 0 || plen > ustarPrefixSize {
		return "", "", false
	}
	return name[:i], name[i+1:], true
}
