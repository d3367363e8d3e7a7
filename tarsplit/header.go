package tarsplit

import (
	"archive/tar"
	"bytes"
	"fmt"
	"strings"
	"time"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerfs"
)

// sameEntry reports whether two TOC entries have the same tar metadata: a known entry's header
// bytes can then be reused as they are.
func sameEntry(a, b *layerfs.Entry) bool { return chunked.SameEntryMetadata(a, b) == nil }

// typeFlags maps TOC entry types back to tar type flags.
var typeFlags = map[layerfs.Type]byte{
	layerfs.TypeReg:     tar.TypeReg,
	layerfs.TypeLink:    tar.TypeLink,
	layerfs.TypeChar:    tar.TypeChar,
	layerfs.TypeBlock:   tar.TypeBlock,
	layerfs.TypeDir:     tar.TypeDir,
	layerfs.TypeFifo:    tar.TypeFifo,
	layerfs.TypeSymlink: tar.TypeSymlink,
}

// basicPAXKeys are the PAX records Go's writer derives from header fields.
var basicPAXKeys = map[string]bool{
	"path": true, "linkpath": true, "size": true, "uid": true, "gid": true,
	"uname": true, "gname": true, "mtime": true, "atime": true, "ctime": true,
}

// parseRaw parses the bytes in front of one payload (extension headers and header).
func parseRaw(raw []byte) (*tar.Header, error) {
	r := bytes.NewReader(raw)
	hdr, err := tar.NewReader(r).Next()
	if err != nil {
		return nil, fmt.Errorf("parsing header: %w: %w", errdefs.ErrInvalid, err)
	}
	if r.Len() != 0 {
		return nil, fmt.Errorf("%d bytes after the header of %q: %w", r.Len(), hdr.Name, errdefs.ErrInvalid)
	}
	return hdr, nil
}

// owners names the users and groups of known entries.
type owners interface {
	uname(uid int) (string, bool)
	gname(gid int) (string, bool)
}

// headerFromEntry builds the tar header a TOC entry describes. Fields the TOC does not record
// come from tmpl if it is not nil (PAX records other than xattrs, when tmpl is the same file) and
// from names (user and group names, as some known entry of the same owner has them).
func headerFromEntry(e *layerfs.Entry, tmpl *tar.Header, sameName bool, names owners) (*tar.Header, error) {
	flag, ok := typeFlags[e.Type]
	if !ok {
		return nil, fmt.Errorf("%q: TOC entry type %q: %w", e.Name, e.Type, errdefs.ErrUnsupported)
	}
	h := &tar.Header{
		Typeflag: flag, Name: e.Name, Linkname: e.Linkname, Size: e.Size, Mode: e.Mode,
		Uid: e.UID, Gid: e.GID, Devmajor: e.Devmajor, Devminor: e.Devminor,
	}
	h.ModTime = time.Unix(0, 0) // what a header with no time holds
	if e.ModTime != nil {
		h.ModTime = *e.ModTime
	}
	if e.AccessTime != nil {
		h.AccessTime = *e.AccessTime
	}
	if e.ChangeTime != nil {
		h.ChangeTime = *e.ChangeTime
	}
	for k, v := range e.Xattrs { // decoded already
		if h.PAXRecords == nil {
			h.PAXRecords = map[string]string{}
		}
		h.PAXRecords[chunked.PAXXattrPrefix+k] = string(v)
	}
	if tmpl != nil && tmpl.Uid == e.UID {
		h.Uname = tmpl.Uname
	} else if names != nil {
		h.Uname, _ = names.uname(e.UID)
	}
	if tmpl != nil && tmpl.Gid == e.GID {
		h.Gname = tmpl.Gname
	} else if names != nil {
		h.Gname, _ = names.gname(e.GID)
	}
	if tmpl != nil && sameName {
		// Records the TOC does not show (file flags, creation times…) most likely stayed.
		for k, v := range tmpl.PAXRecords {
			if !basicPAXKeys[k] && !strings.HasPrefix(k, chunked.PAXXattrPrefix) && !strings.HasPrefix(k, "GNU.sparse.") {
				if h.PAXRecords == nil {
					h.PAXRecords = map[string]string{}
				}
				h.PAXRecords[k] = v
			}
		}
	}
	return h, nil
}

// goFormats are the format choices a writer built on Go's archive/tar makes: none (Go picks
// USTAR, else PAX, else GNU, rounding times to seconds) or one forced.
var goFormats = []tar.Format{tar.FormatUnknown, tar.FormatUSTAR, tar.FormatPAX, tar.FormatGNU}

// writeGo encodes hdr as Go's archive/tar writes it with the given format choice.
// A header the writer would write as plain USTAR is encoded directly (ustar.go): same bytes.
func writeGo(hdr *tar.Header, format tar.Format) ([]byte, error) {
	if b, ok := ustarHeader(hdr, format); ok {
		return b, nil
	}
	return writeGoTar(hdr, format)
}

// writeGoTar encodes hdr through archive/tar's Writer, the reference ustarHeader matches.
func writeGoTar(hdr *tar.Header, format tar.Format) ([]byte, error) {
	var buf bytes.Buffer
	h := *hdr
	h.Format = format
	if err := tar.NewWriter(&buf).WriteHeader(&h); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// describes reports whether raw is one header that reads back as exactly e's metadata.
func describes(raw []byte, e *layerfs.Entry) bool {
	hdr, err := parseRaw(raw)
	if err != nil {
		return false
	}
	got, err := chunked.HeaderEntry(hdr)
	return err == nil && sameEntry(&got, e)
}

// synthesize returns the header bytes for e as the writer that wrote tmpl (a known entry, or
// nil) would write them: with Go's archive/tar in the format choice that reproduces tmpl's bytes
// exactly, else by patching tmpl's headers (patch.go). The result always reads back as e.
func synthesize(e *layerfs.Entry, tmpl *record, names owners) ([]byte, error) {
	if tmpl == nil {
		h, err := headerFromEntry(e, nil, false, names)
		if err != nil {
			return nil, err
		}
		if raw, err := writeGo(h, tar.FormatUnknown); err == nil && describes(raw, e) {
			return raw, nil
		}
		return nil, fmt.Errorf("%q: no known entry to model its header on: %w", e.Name, errdefs.ErrUnsupported)
	}
	traw, err := tmpl.header()
	if err != nil {
		return nil, err
	}
	th, err := parseRaw(traw)
	if err != nil {
		return nil, err
	}
	h, err := headerFromEntry(e, th, tmpl.entry.Name == e.Name, names)
	if err != nil {
		return nil, err
	}
	for _, f := range goFormats {
		if again, err := writeGo(th, f); err != nil || !bytes.Equal(again, traw) {
			continue // not how tmpl was written
		}
		if raw, err := writeGo(h, f); err == nil && describes(raw, e) {
			return raw, nil
		}
	}
	if raw, ok := patchHeaders(traw, th, h); ok && describes(raw, e) {
		return raw, nil
	}
	return nil, fmt.Errorf("%q: cannot write its header as the writer of %q did: %w", e.Name, tmpl.entry.Name, errdefs.ErrUnsupported)
}
