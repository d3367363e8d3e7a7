package interop

import (
	"archive/tar"
	"bytes"
	"testing"

	"github.com/kura-oci/kura/chunked"
)

// FuzzDifferentialConvert: for any file contents, our blob equals the reference's byte for byte.
// The fuzz input is split into files at 0xFF 0xFE markers; a length byte after a 0xFD marker
// expands to a zero run, so holes of every size next to rollsum cuts are reachable.
func FuzzDifferentialConvert(f *testing.F) {
	f.Add([]byte("hello\xff\xfeworld\xfd\x10tail"))
	f.Add(append(bytes.Repeat([]byte("abcdefgh"), 20000), 0xfd, 0xff))
	f.Add([]byte("\xfd\xff\xfd\xff\xff\xfe\xfd\x04"))
	f.Fuzz(func(t *testing.T, spec []byte) {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for i, part := range bytes.Split(spec, []byte{0xff, 0xfe}) {
			var content []byte
			for j := 0; j < len(part); j++ {
				if part[j] == 0xfd && j+1 < len(part) {
					content = append(content, make([]byte, int(part[j+1])*64)...)
					j++
					continue
				}
				content = append(content, part[j])
			}
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f" + string(rune('a'+i%26)) + string(rune('a'+i/26%26)), Mode: 0o644, Size: int64(len(content))}); err != nil {
				t.Skip()
			}
			tw.Write(content)
		}
		tw.Close()
		in := buf.Bytes()
		ref, refAnn := reference(t, in, 1)
		blob, desc := ours(t, in, chunked.WithLevel(1))
		if !bytes.Equal(blob, ref) {
			t.Fatalf("blobs differ: %d vs %d bytes", len(blob), len(ref))
		}
		if desc.Annotations[chunked.AnnotationTOCDigest] != refAnn[chunked.AnnotationTOCDigest] {
			t.Fatal("TOC digests differ")
		}
	})
}
