// Package tartest builds layer tars for tests from a compact description: one Entry per member
// (regular file, directory, symlink, hardlink, device, whiteout), with modes, owners, times and
// xattrs set by chained methods. Tar writes them in order, as PAX unless an entry says otherwise,
// exactly as given: a hostile test can write any name, type or size. Only tests import it.
package tartest

import (
	"archive/tar"
	"bytes"
	"io"
	"path"
	"testing"
	"time"
)

// Entry is one member of a test tar: its header and its payload.
type Entry struct {
	Header tar.Header
	Data   []byte
}

// File is a regular file (mode 0644) holding data.
func File(name, data string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}, Data: []byte(data)}
}

// Bytes is File with binary content.
func Bytes(name string, data []byte) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Size: int64(len(data))}, Data: data}
}

// Dir is a directory (mode 0755).
func Dir(name string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

// Symlink is a symbolic link (mode 0777) to target.
func Symlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeSymlink, Name: name, Linkname: target, Mode: 0o777}}
}

// Hardlink is a hard link (mode 0644) to the earlier member target.
func Hardlink(name, target string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeLink, Name: name, Linkname: target, Mode: 0o644}}
}

// Device is a character or block device (typ tar.TypeChar or tar.TypeBlock, mode 0666).
func Device(name string, typ byte, major, minor int64) Entry {
	return Entry{Header: tar.Header{Typeflag: typ, Name: name, Mode: 0o666, Devmajor: major, Devminor: minor}}
}

// Fifo is a named pipe (mode 0644).
func Fifo(name string) Entry {
	return Entry{Header: tar.Header{Typeflag: tar.TypeFifo, Name: name, Mode: 0o644}}
}

// Whiteout is the OCI whiteout that deletes name of a lower layer: an empty .wh.<base> file.
func Whiteout(name string) Entry {
	dir, base := path.Split(name)
	return File(dir+".wh."+base, "")
}

// Opaque is the OCI marker that hides everything lower layers put in dir.
func Opaque(dir string) Entry {
	return File(path.Join(dir, ".wh..wh..opq"), "")
}

// Mode returns e with permission bits mode.
func (e Entry) Mode(mode int64) Entry { e.Header.Mode = mode; return e }

// Owner returns e owned by uid:gid.
func (e Entry) Owner(uid, gid int) Entry { e.Header.Uid, e.Header.Gid = uid, gid; return e }

// Time returns e with modification time mt.
func (e Entry) Time(mt time.Time) Entry { e.Header.ModTime = mt; return e }

// Xattr returns e with the extended attribute key=value (a SCHILY.xattr PAX record).
func (e Entry) Xattr(key, value string) Entry {
	recs := make(map[string]string, len(e.Header.PAXRecords)+1)
	for k, v := range e.Header.PAXRecords {
		recs[k] = v
	}
	recs["SCHILY.xattr."+key] = value
	e.Header.PAXRecords = recs
	return e
}

// At returns the entries with modification time mt where they have none: one stamp for a whole
// layer, as the tests' fixed times make their tars (and so digests) reproducible.
func At(mt time.Time, entries ...Entry) []Entry {
	out := make([]Entry, len(entries))
	for i, e := range entries {
		if e.Header.ModTime.IsZero() {
			e.Header.ModTime = mt
		}
		out[i] = e
	}
	return out
}

// Tar returns the tar of entries, in order; an entry without a format is written as PAX.
func Tar(t testing.TB, entries ...Entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := Write(&buf, entries...); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Write writes the tar of entries to w: Tar for callers without a testing.TB (examples).
func Write(w io.Writer, entries ...Entry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		hdr := e.Header
		if hdr.Format == tar.FormatUnknown {
			hdr.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(&hdr); err != nil {
			return err
		}
		if _, err := tw.Write(e.Data); err != nil {
			return err
		}
	}
	return tw.Close()
}
