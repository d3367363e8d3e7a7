package digests

import (
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzIsSHA256: the fast check agrees with go-digest on which strings are valid sha256 digests.
func FuzzIsSHA256(f *testing.F) {
	f.Add(string(digest.FromString("x")))
	f.Add("sha256:" + strings.Repeat("A", 64))
	f.Add("sha512:" + strings.Repeat("a", 128))
	f.Add("sha256:" + strings.Repeat("0", 63))
	f.Fuzz(func(t *testing.T, s string) {
		d := digest.Digest(s)
		want := d.Validate() == nil && d.Algorithm() == digest.SHA256
		if got := IsSHA256(d); got != want {
			t.Fatalf("IsSHA256(%q) = %v, go-digest says %v", s, got, want)
		}
		p, err := ParseSHA256(s)
		q, err2 := digest.Parse(s)
		if (err == nil) != (err2 == nil) || p != q {
			t.Fatalf("ParseSHA256(%q) = %q, %v; digest.Parse: %q, %v", s, p, err, q, err2)
		}
	})
}
