package tartest_test

import (
	"archive/tar"
	"bytes"
	"io"
	"testing"
	"time"

	"github.com/kura-oci/kura/internal/testkit/tartest"
)

// Every constructor and modifier reaches the header a reader sees, PAX by default.
func TestTarRoundTrip(t *testing.T) {
	mt := time.Unix(1700000000, 0)
	b := tartest.Tar(t, tartest.At(mt,
		tartest.Dir("etc/"),
		tartest.File("etc/motd", "hello\n").Mode(0o600).Owner(1, 2).Xattr("user.k", "v"),
		tartest.Symlink("etc/link", "motd"),
		tartest.Hardlink("etc/hard", "etc/motd"),
		tartest.Device("dev/null", tar.TypeChar, 1, 3),
		tartest.Whiteout("usr/gone"),
		tartest.Opaque("var"),
		tartest.Fifo("run/fifo").Time(time.Unix(5, 123)), // sub-second: only PAX keeps it
	)...)
	type want struct {
		name, link, data string
		typ              byte
		mode             int64
	}
	wants := []want{
		{"etc/", "", "", tar.TypeDir, 0o755},
		{"etc/motd", "", "hello\n", tar.TypeReg, 0o600},
		{"etc/link", "motd", "", tar.TypeSymlink, 0o777},
		{"etc/hard", "etc/motd", "", tar.TypeLink, 0o644},
		{"dev/null", "", "", tar.TypeChar, 0o666},
		{"usr/.wh.gone", "", "", tar.TypeReg, 0o644},
		{"var/.wh..wh..opq", "", "", tar.TypeReg, 0o644},
		{"run/fifo", "", "", tar.TypeFifo, 0o644},
	}
	tr := tar.NewReader(bytes.NewReader(b))
	for i, w := range wants {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("entry %d: %v", i, err)
		}
		data, _ := io.ReadAll(tr)
		if h.Name != w.name || h.Linkname != w.link || string(data) != w.data || h.Typeflag != w.typ || h.Mode != w.mode {
			t.Errorf("entry %d: %q %q %q %c %o, want %+v", i, h.Name, h.Linkname, data, h.Typeflag, h.Mode, w)
		}
		wantTime := mt
		if w.name == "run/fifo" {
			wantTime = time.Unix(5, 123)
		}
		if !h.ModTime.Equal(wantTime) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, wantTime)
		}
		if w.name == "etc/motd" && (h.Uid != 1 || h.Gid != 2 || h.PAXRecords["SCHILY.xattr.user.k"] != "v") {
			t.Errorf("etc/motd: owner %d:%d, records %v", h.Uid, h.Gid, h.PAXRecords)
		}
		if w.name == "dev/null" && (h.Devmajor != 1 || h.Devminor != 3) {
			t.Errorf("dev/null: device %d,%d", h.Devmajor, h.Devminor)
		}
	}
	if _, err := tr.Next(); err != io.EOF {
		t.Fatalf("after the last entry: %v, want EOF", err)
	}
}

// Xattr copies the records: an entry used as a base keeps its own.
func TestXattrDoesNotAlias(t *testing.T) {
	base := tartest.File("f", "x").Xattr("user.a", "1")
	other := base.Xattr("user.b", "2")
	if _, ok := base.Header.PAXRecords["SCHILY.xattr.user.b"]; ok || len(other.Header.PAXRecords) != 2 {
		t.Fatalf("base %v, other %v", base.Header.PAXRecords, other.Header.PAXRecords)
	}
}

// A regular file whose data is shorter than its size is a write error, not a silent bad tar.
func TestWriteRefusesShortData(t *testing.T) {
	e := tartest.File("f", "abc")
	e.Header.Size = 10
	if err := tartest.Write(io.Discard, e); err == nil {
		t.Fatal("a short payload was written")
	}
}
