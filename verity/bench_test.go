package verity

import "testing"

// BenchmarkDigest measures the fs-verity digest of an 8 MiB file, streamed in 64 KiB writes.
func BenchmarkDigest(b *testing.B) {
	data := make([]byte, 8<<20)
	for i := range data {
		data[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		h := New()
		for off := 0; off < len(data); off += 64 << 10 {
			h.Write(data[off : off+64<<10])
		}
		if h.Digest().IsZero() {
			b.Fatal("zero digest")
		}
	}
}
