package registriesconf

import (
	"errors"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// FuzzPullSources: whatever is typed, resolution does not panic, fails with a classified error,
// or yields Docker sources whose names parse back and whose registry is not blocked.
func FuzzPullSources(f *testing.F) {
	for _, s := range []string{"busybox", "app:1", "ns/x@sha256:0123456789012345678901234567890123456789012345678901234567890123",
		"c.example/team/app:1", "docker://busybox", "oci:/x:y", "x.blocked.example/a", "c.example:5000/a", "localhost/x", "a/b/c:d", "dir:/x", ":", "@", "/"} {
		f.Add(s)
	}
	dir := f.TempDir()
	p := dir + "/registries.conf"
	if err := writeString(p, `
unqualified-search-registries = ["a.example", "b.example"]
[aliases]
"app" = "c.example/team/app"
[[registry]]
prefix = "c.example/team"
location = "internal.example:5000/mirrored/team"
[[registry.mirror]]
location = "m1.example/team"
[[registry]]
prefix = "*.blocked.example"
blocked = true
`); err != nil {
		f.Fatal(err)
	}
	c, err := Load(Paths{File: p})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, input string) {
		sources, err := c.PullSources(input)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnsupported) && !errors.Is(err, errdefs.ErrPermission) {
				t.Fatalf("%q: unclassified error %v", input, err)
			}
			return
		}
		for _, s := range sources {
			if s.Ref.Transport != imageref.Docker {
				continue
			}
			if _, err := imageref.Parse(s.Ref.String()); err != nil {
				t.Fatalf("%q: source %s does not parse: %v", input, s.Ref, err)
			}
			if strings.HasSuffix(s.Name.Domain, ".blocked.example") {
				t.Fatalf("%q: blocked registry %s among the sources", input, s.Name.Domain)
			}
		}
	})
}
