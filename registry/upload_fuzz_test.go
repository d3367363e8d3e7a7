package registry

import "testing"

// FuzzParseUploadRange: the upload status Range header comes from the registry; any answer must
// give a byte count that is zero or one past a non-negative end, or an error, never a panic.
func FuzzParseUploadRange(f *testing.F) {
	for _, s := range []string{"0-0", "0-4095", "bytes=0-99", "", "5-9", "0-", "-1", "0--1", "0-9223372036854775807"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := parseUploadRange(s)
		if err != nil {
			return
		}
		if n < 0 {
			t.Fatalf("%q: %d bytes", s, n)
		}
	})
}
