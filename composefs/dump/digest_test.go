package dump

import (
	"errors"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

// TestEmptyDigestField: mkcomposefs takes an empty digest field as a digest of uninitialised
// memory. Kura refuses a written empty field always, and a line that ends before the field where
// the digest would be written (an external file's metacopy); elsewhere a short line is accepted
// without strict mode, as the reference accepts it (honggfuzz-longlink-unterminated.dump).
func TestEmptyDigestField(t *testing.T) {
	const root = "/ 4096 40755 2 0 0 0 0.0 - - -\n"
	digest := strings.Repeat("ab", 32)
	for _, c := range []struct {
		name, line string
		ok         bool
	}{
		{"file, empty field", "/f 100 100644 1 0 0 0 0.0 ab/cd - \n", false},
		{"file, empty field, xattr after it", "/f 100 100644 1 0 0 0 0.0 ab/cd -  user.a=b\n", false},
		{"directory, empty field", "/d 4096 40755 2 0 0 0 0.0 - - \n", false},
		{"file, line ends before the field", "/f 100 100644 1 0 0 0 0.0 ab/cd -\n", false},
		{"char device, line ends before the field", "/c 0 20644 1 0 0 1 0.0 - -\n", true},
		{"file, no digest", "/f 100 100644 1 0 0 0 0.0 ab/cd - -\n", true},
		{"file, digest", "/f 100 100644 1 0 0 0 0.0 ab/cd - " + digest + "\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			root, err := Parse(strings.NewReader(root+c.line), false)
			if c.ok {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				if n := root.LookupPath(strings.Fields(c.line)[0]); n == nil {
					t.Fatal("entry missing")
				} else if (n.Digest != nil) != strings.Contains(c.line, digest) {
					t.Errorf("digest %v", n.Digest)
				}
				return
			}
			if !errors.Is(err, errdefs.ErrInvalid) {
				t.Fatalf("got %v, want ErrInvalid", err)
			}
		})
	}
}
