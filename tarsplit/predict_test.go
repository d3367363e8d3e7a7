package tarsplit

import (
	"archive/tar"
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/internal/testdata"
)

func readVector(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdata.Dir(t, "zstd-chunked"), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A layer predicted from itself is all reuse and must come out exact; from nothing, every
// header is Go's.
func TestPredictVectors(t *testing.T) {
	for _, name := range []string{"mixed", "real"} {
		t.Run(name, func(t *testing.T) {
			l := convert(t, readVector(t, name+".tar"))
			if !bytes.Equal(l.tarSplit, readVector(t, name+".tar-split.json")) {
				t.Fatal("converted tar-split differs from the vector")
			}
			st, ok := checkPrediction(t, l, l)
			if !ok || st.Synthesized != 0 || st.NewCRCs != 0 {
				t.Errorf("from itself: exact=%v %+v", ok, st)
			}
			st, ok = checkPrediction(t, l)
			t.Logf("from nothing: exact=%v %+v", ok, st)
		})
	}
}

// file is one entry of a generated tree.
type file struct {
	hdr  tar.Header
	data []byte
}

var base = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// treeV1 is a tree with every entry type; big holds enough random bytes to be cut in chunks.
func treeV1(rng *rand.Rand) []file {
	rnd := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	dir := func(name string) file {
		return file{hdr: tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755, ModTime: base}}
	}
	reg := func(name string, data []byte) file {
		return file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, ModTime: base, Size: int64(len(data))}, data: data}
	}
	long := "usr/share/" + strings.Repeat("very-long-directory-name/", 5) + "file.txt"
	fs := []file{
		dir("etc/"), reg("etc/hostname", []byte("kura\n")), reg("etc/empty", nil),
		reg("etc/motd", bytes.Repeat([]byte("welcome "), 500)),
		dir("usr/"), dir("usr/bin/"), reg("usr/bin/tool", rnd(20000)),
		reg("usr/lib/big.so", rnd(3<<20)),
		reg(long, []byte("long name\n")),
		reg("usr/share/ファイル.txt", []byte("non-ascii\n")),
		reg("usr/share/dup", bytes.Repeat([]byte("welcome "), 500)),
		{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "usr/bin/alias", Linkname: "tool", Mode: 0o777, ModTime: base}},
		{hdr: tar.Header{Typeflag: tar.TypeLink, Name: "usr/bin/hard", Linkname: "usr/bin/tool", Mode: 0o644, ModTime: base}},
		{hdr: tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: base}},
		{hdr: tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: base}},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "usr/bin/ping", Mode: 0o755, ModTime: base, Size: 4,
			PAXRecords: map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}}, data: []byte("ping")},
		{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/user/.profile", Mode: 0o600, Uid: 1000, Gid: 1000,
			Uname: "user", Gname: "users", ModTime: base, Size: 6}, data: []byte("PATH=\n")},
	}
	for i := range 40 {
		fs = append(fs, reg(fmt.Sprintf("usr/lib/mod%02d.py", i), rnd(100+rng.IntN(5000))))
	}
	return fs
}

// treeV2 is an update of v1: content, sizes, times, modes, owners, links and xattrs change,
// files come and go, some with names too long for a plain header.
func treeV2(v1 []file, rng *rand.Rand, subSecond bool) []file {
	later := base.Add(24 * time.Hour)
	if subSecond {
		later = later.Add(123456789 * time.Nanosecond)
	}
	var fs []file
	for _, f := range v1 {
		f.hdr.PAXRecords = cloneMap(f.hdr.PAXRecords)
		switch f.hdr.Name {
		case "etc/hostname":
			f.data = []byte("kura2\n") // other size, same time
		case "usr/bin/tool":
			f.data = bytes.Clone(f.data)
			f.data[100] ^= 1 // same size and time: header unchanged
		case "usr/lib/mod03.py", "usr/lib/mod17.py":
			f.data = append(bytes.Clone(f.data), "# patched\n"...)
			f.hdr.ModTime = later
		case "usr/lib/mod05.py":
			continue // removed
		case "etc/motd":
			f.hdr.Mode = 0o640
		case "home/user/.profile":
			f.hdr.Uid, f.hdr.Uname = 0, "" // as other entries of uid 0 are
		case "usr/bin/alias":
			f.hdr.Linkname = "ping"
		case "usr/bin/ping":
			f.hdr.PAXRecords["SCHILY.xattr.user.comment"] = "new"
		case "usr/lib/big.so":
			f.data = bytes.Clone(f.data)
			f.data[1<<20] ^= 0xff
			f.hdr.ModTime = later
		}
		f.hdr.Size = int64(len(f.data))
		if f.hdr.Typeflag != tar.TypeReg {
			f.hdr.Size = 0
		}
		fs = append(fs, f)
	}
	fs = append(fs,
		file{hdr: tar.Header{Typeflag: tar.TypeDir, Name: "opt/", Mode: 0o755, ModTime: later}},
		file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opt/new.txt", Mode: 0o644, ModTime: later, Size: 4}, data: []byte("new\n")},
		file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "opt/" + strings.Repeat("n", 120), Mode: 0o644, ModTime: later, Size: 2}, data: []byte("x\n")},
		file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: "home/user/.bashrc", Mode: 0o644, Uid: 1000, Gid: 1000,
			Uname: "user", Gname: "users", ModTime: later, Size: 3}, data: []byte("ls\n")},
		file{hdr: tar.Header{Typeflag: tar.TypeSymlink, Name: "opt/" + strings.Repeat("l", 110), Linkname: strings.Repeat("t", 105), Mode: 0o777, ModTime: later}},
	)
	for i := range 3 {
		data := make([]byte, 200+rng.IntN(3000))
		for j := range data {
			data[j] = byte(rng.Uint32())
		}
		fs = append(fs, file{hdr: tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("usr/lib/new%d.py", i), Mode: 0o644, ModTime: later, Size: int64(len(data))}, data: data})
	}
	return fs
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	c := make(map[string]string, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// goTar writes files with Go's archive/tar in the given format.
func goTar(t testing.TB, fs []file, format tar.Format) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range fs {
		h := f.hdr
		h.Format = format
		if format == tar.FormatGNU {
			h.PAXRecords = nil // GNU has no xattrs
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatalf("%s: %v", h.Name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// Updates written by Go's archive/tar (what buildah, podman and the bench write) are predicted
// exactly in every format, whatever changed.
func TestPredictGoUpdates(t *testing.T) {
	for _, tc := range []struct {
		name      string
		format    tar.Format
		subSecond bool
	}{
		{"default", tar.FormatUnknown, false},
		{"pax", tar.FormatPAX, true},
		{"gnu", tar.FormatGNU, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rng := rand.New(rand.NewPCG(1, 2))
			v1 := treeV1(rng)
			v2 := treeV2(v1, rng, tc.subSecond)
			l1, l2 := convert(t, goTar(t, v1, tc.format)), convert(t, goTar(t, v2, tc.format))
			chunks := 0
			for _, e := range l2.toc.Entries {
				if e.Type == chunked.TypeChunk {
					chunks++
				}
			}
			if chunks == 0 {
				t.Fatal("no chunk entries: the big file should be cut in chunks")
			}
			st, ok := checkPrediction(t, l2, l1)
			t.Logf("%+v", st)
			if !ok {
				t.Fatal("prediction not exact")
			}
			if st.Synthesized == 0 || st.Reused == 0 || st.NewCRCs == 0 {
				t.Errorf("the update should exercise reuse, synthesis and new CRCs: %+v", st)
			}
			// Two known layers: the first wins, the second supplies what the first lacks.
			if _, ok := checkPrediction(t, l2, l1, l2); !ok {
				t.Error("prediction from [v1, v2] not exact")
			}
		})
	}
}
