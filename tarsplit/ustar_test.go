package tarsplit

import (
	"archive/tar"
	"bytes"
	"strings"
	"testing"
	"time"
)

// checkUSTAR fails if ustarHeader encodes hdr otherwise than archive/tar does, and reports
// whether it took hdr (false: left to archive/tar).
func checkUSTAR(t *testing.T, hdr *tar.Header, format tar.Format) bool {
	t.Helper()
	fast, ok := ustarHeader(hdr, format)
	if !ok {
		return false
	}
	want, err := writeGoTar(hdr, format)
	if err != nil {
		t.Fatalf("%q format %v: direct encoding of a header archive/tar refuses: %v", hdr.Name, format, err)
	}
	if !bytes.Equal(fast, want) {
		t.Fatalf("%q format %v: direct encoding differs from archive/tar's:\n%q\n%q", hdr.Name, format, fast, want)
	}
	return true
}

func TestUSTARMatchesGo(t *testing.T) {
	mtime := time.Unix(1700000000, 0)
	long := strings.Repeat("d/", 60) + "file"
	cases := []struct {
		hdr  tar.Header
		fast bool // taken directly with no format choice
	}{
		{tar.Header{Typeflag: tar.TypeReg, Name: "etc/passwd", Mode: 0o644, Size: 1234, ModTime: mtime, Uname: "root", Gname: "root"}, true},
		{tar.Header{Typeflag: tar.TypeDir, Name: "usr/share/", Mode: 0o755, ModTime: mtime}, true},
		{tar.Header{Typeflag: tar.TypeSymlink, Name: "bin", Linkname: "usr/bin", Mode: 0o777, ModTime: mtime}, true},
		{tar.Header{Typeflag: tar.TypeLink, Name: "a", Linkname: "b", Uid: 1000, Gid: 1000, ModTime: mtime}, true},
		{tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Devmajor: 1, Devminor: 3, Mode: 0o666, ModTime: mtime}, true},
		{tar.Header{Typeflag: tar.TypeFifo, Name: "p", ModTime: time.Unix(5, 600_000_000)}, true},
		{tar.Header{Typeflag: tar.TypeReg, Name: long, ModTime: mtime}, true},
		{tar.Header{Typeflag: tar.TypeReg, Name: "no-time"}, true},
		{tar.Header{Typeflag: tar.TypeReg, Name: strings.Repeat("x", 101), ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "é", ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "big", Size: 1 << 33, ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "dir/", ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "u", Uname: strings.Repeat("u", 33), ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "x", ModTime: mtime, PAXRecords: map[string]string{"SCHILY.xattr.a": "b"}}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "old", ModTime: time.Unix(-1, 0)}, false},
		{tar.Header{Typeflag: tar.TypeReg, Name: "id", Uid: 1 << 21, ModTime: mtime}, false},
		{tar.Header{Typeflag: tar.TypeRegA, Name: "rega", ModTime: mtime}, false},
	}
	for _, c := range cases {
		if got := checkUSTAR(t, &c.hdr, tar.FormatUnknown); got != c.fast {
			t.Errorf("%q: taken directly %v, want %v", c.hdr.Name, got, c.fast)
		}
		for _, f := range goFormats[1:] {
			checkUSTAR(t, &c.hdr, f)
		}
	}
	// Explicit formats: a sub-second or extra time is left to archive/tar.
	h := tar.Header{Typeflag: tar.TypeReg, Name: "t", ModTime: mtime, AccessTime: mtime}
	if checkUSTAR(t, &h, tar.FormatPAX) || !checkUSTAR(t, &h, tar.FormatUnknown) {
		t.Error("an access time must leave only the format-less choice to the direct encoding")
	}
}

func FuzzUSTARMatchesGo(f *testing.F) {
	f.Add(byte('0'), "etc/passwd", "", "root", "root", int64(0o644), 0, 0, int64(12), int64(1700000000), int64(0), int64(0), int64(0), uint8(0))
	f.Add(byte('5'), strings.Repeat("a/", 70)+"b", "", "", "", int64(0o755), 1<<21-1, 5, int64(0), int64(-3), int64(999_999_999), int64(1), int64(2), uint8(1))
	f.Add(byte('2'), "l", strings.Repeat("t", 100), "", "", int64(0o777), 0, 0, int64(0), int64(1<<33-1), int64(500_000_000), int64(0), int64(1<<21), uint8(2))
	f.Fuzz(func(t *testing.T, flag byte, name, link, uname, gname string, mode int64, uid, gid int, size, sec, nsec, major, minor int64, choice uint8) {
		hdr := tar.Header{
			Typeflag: flag, Name: name, Linkname: link, Uname: uname, Gname: gname, Mode: mode,
			Uid: uid, Gid: gid, Size: size, ModTime: time.Unix(sec, nsec), Devmajor: major, Devminor: minor,
		}
		if choice&4 != 0 {
			hdr.AccessTime = time.Unix(sec, 0)
		}
		checkUSTAR(t, &hdr, goFormats[int(choice)%len(goFormats)])
	})
}

// BenchmarkHeaderEncoding: a typical header, through archive/tar and directly.
func BenchmarkHeaderEncoding(b *testing.B) {
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: "usr/share/doc/apache2/changelog.Debian.gz", Mode: 0o644,
		Size: 123456, ModTime: time.Unix(1700000000, 0), Uname: "root", Gname: "root"}
	for _, c := range []struct {
		name   string
		encode func(*tar.Header, tar.Format) ([]byte, error)
	}{{"archive-tar", writeGoTar}, {"direct", writeGo}} {
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := c.encode(hdr, tar.FormatUnknown); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
