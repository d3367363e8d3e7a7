package interop

import (
	"archive/tar"
	"bytes"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

// genTar builds a tar that covers every entry type and the chunker's corner cases.
func genTar(t testing.TB, seed uint64) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	mt := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	add := func(h *tar.Header, data []byte) {
		t.Helper()
		if h.ModTime.IsZero() {
			h.ModTime = mt
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(data))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if len(data) > 0 {
			if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
		}
	}
	random := func(n int) []byte {
		b := make([]byte, n)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		return b
	}
	text := func(n int) []byte {
		words := []string{"layer ", "chunk ", "zstd ", "frame ", "tar ", "split\n", "container ", "image "}
		var sb strings.Builder
		for sb.Len() < n {
			sb.WriteString(words[rng.IntN(len(words))])
		}
		return []byte(sb.String()[:n])
	}
	withZeros := func(parts ...any) []byte {
		var b []byte
		for _, p := range parts {
			switch p := p.(type) {
			case int: // zeros
				b = append(b, make([]byte, p)...)
			case []byte:
				b = append(b, p...)
			}
		}
		return b
	}
	dir := func(name string) { add(&tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}, nil) }
	file := func(name string, data []byte) {
		add(&tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644, Uid: 1000, Gid: 1000}, data)
	}

	dir("d/")
	dir("d/sub/")
	file("d/empty", nil)
	file("d/one", []byte("x"))
	file("d/small", text(300))
	file("d/random-3m", random(3<<20+17))
	file("d/text-2m", text(2<<20))
	file("d/zeros-1023", withZeros(random(100), 1023, random(100)))
	file("d/zeros-1024", withZeros(random(100), 1024, random(100)))
	file("d/zeros-start", withZeros(5000, random(70000)))
	file("d/zeros-end", withZeros(random(70000), 5000))
	file("d/all-zeros", withZeros(200000))
	file("d/all-zeros-small", withZeros(1000))
	file("d/many-holes", withZeros(random(10), 2000, random(1), 1024, text(100000), 1023, random(5), 4096))
	file("d/big-hole", withZeros(random(1000), 20<<20, random(1000)))
	file("d/constant-10m", bytes.Repeat([]byte{'a'}, 10<<20)) // no rollsum cut: one frame > 8 MiB
	add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "d/link", Linkname: "small", Mode: 0o777}, nil)
	add(&tar.Header{Typeflag: tar.TypeSymlink, Name: "d/abs-link", Linkname: "/etc/passwd", Mode: 0o777}, nil)
	add(&tar.Header{Typeflag: tar.TypeLink, Name: "d/hardlink", Linkname: "d/small", Mode: 0o644}, nil)
	add(&tar.Header{Typeflag: tar.TypeChar, Name: "d/null", Mode: 0o666, Devmajor: 1, Devminor: 3}, nil)
	add(&tar.Header{Typeflag: tar.TypeBlock, Name: "d/sda", Mode: 0o660, Devmajor: 8, Devminor: 0}, nil)
	add(&tar.Header{Typeflag: tar.TypeFifo, Name: "d/fifo", Mode: 0o600}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/xattrs", Mode: 0o644, Format: tar.FormatPAX,
		PAXRecords: map[string]string{"SCHILY.xattr.user.test": "value\x00bin", "SCHILY.xattr.security.capability": "\x01\x00\x00\x02"}}, []byte("with xattrs"))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/times", Mode: 0o644, Format: tar.FormatPAX,
		AccessTime: mt.Add(time.Hour), ChangeTime: mt.Add(2 * time.Hour), ModTime: mt.Add(1500 * time.Millisecond)}, []byte("times"))
	file("d/"+strings.Repeat("long-name-", 15)+"end", text(1000))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/gnu-" + strings.Repeat("g", 120), Mode: 0o644, Format: tar.FormatGNU, ModTime: mt}, nil)
	file("d/ünïcødé-名前", text(5000))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/.wh.deleted", Mode: 0o644}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/sub/.wh..wh..opq", Mode: 0o644}, nil)
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/setuid", Mode: 0o4755, Uid: 0, Gid: 0}, random(10))
	add(&tar.Header{Typeflag: tar.TypeReg, Name: "d/epoch", Mode: 0o644, ModTime: time.Unix(0, 0)}, random(10))
	// Random files with random zero runs exercise rollsum cuts next to holes.
	for i := range 20 {
		var parts []any
		for range rng.IntN(12) {
			switch rng.IntN(3) {
			case 0:
				parts = append(parts, random(rng.IntN(200000)))
			case 1:
				parts = append(parts, rng.IntN(3000))
			case 2:
				parts = append(parts, text(rng.IntN(100000)))
			}
		}
		file("r/"+string(rune('a'+i)), withZeros(parts...))
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	// GNU tar pads archives to 10 KiB records; the extra zero blocks must survive.
	for buf.Len()%10240 != 0 {
		buf.Write(make([]byte, 512))
	}
	return buf.Bytes()
}
