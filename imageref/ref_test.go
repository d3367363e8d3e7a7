package imageref

import (
	"errors"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

const dgst = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"

func TestParse(t *testing.T) {
	tests := []struct {
		in   string
		want Reference
	}{
		{"docker://busybox", Reference{Transport: Docker, Domain: "docker.io", Path: "library/busybox", Tag: "latest"}},
		{"busybox", Reference{Transport: Docker, Domain: "docker.io", Path: "library/busybox", Tag: "latest"}},
		{"docker://docker.io/busybox:1.36", Reference{Transport: Docker, Domain: "docker.io", Path: "library/busybox", Tag: "1.36"}},
		{"index.docker.io/user/app", Reference{Transport: Docker, Domain: "docker.io", Path: "user/app", Tag: "latest"}},
		{"quay.io/org/sub/app:v1", Reference{Transport: Docker, Domain: "quay.io", Path: "org/sub/app", Tag: "v1"}},
		{"localhost:5000/app", Reference{Transport: Docker, Domain: "localhost:5000", Path: "app", Tag: "latest"}},
		{"docker://127.0.0.1:5000/a/b@" + dgst, Reference{Transport: Docker, Domain: "127.0.0.1:5000", Path: "a/b", Digest: dgst}},
		{"127.0.0.1:5000/a/b:t@" + dgst, Reference{Transport: Docker, Domain: "127.0.0.1:5000", Path: "a/b", Tag: "t", Digest: dgst}},
		{"oci:/tmp/layout", Reference{Transport: OCILayout, Dir: "/tmp/layout"}},
		{"oci:layout:v1.0", Reference{Transport: OCILayout, Dir: "layout", Tag: "v1.0"}},
		{"oci:/l:example.com/app:1", Reference{Transport: OCILayout, Dir: "/l", Tag: "example.com/app:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := Parse(tt.in)
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.in, err)
			}
			if got != tt.want {
				t.Fatalf("Parse(%q) = %+v, want %+v", tt.in, got, tt.want)
			}
			again, err := Parse(got.String())
			if err != nil || again != got {
				t.Fatalf("round trip of %q via %q = %+v, %v", tt.in, got.String(), again, err)
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		in   string
		want error
	}{
		{"", errdefs.ErrInvalid},
		{"docker://", errdefs.ErrInvalid},
		{"docker:busybox", errdefs.ErrInvalid},
		{"docker://host/UPPER", errdefs.ErrInvalid},
		{"docker://busybox@sha256:abc", errdefs.ErrInvalid},
		{"docker://busybox:bad tag", errdefs.ErrInvalid},
		{"docker://a//b", errdefs.ErrInvalid},
		{"oci:", errdefs.ErrInvalid},
		{"oci::name", errdefs.ErrInvalid},
		{"oci:dir:bad name", errdefs.ErrInvalid},
		{"oci:dir:", errdefs.ErrInvalid},
		{"oci:dir:a..b/", errdefs.ErrInvalid},
		{"busy\x00box", errdefs.ErrInvalid},
		{strings.Repeat("a", maxRefLen+1), errdefs.ErrInvalid},
		{"dir:/tmp/x", errdefs.ErrUnsupported},
		{"containers-storage:busybox", errdefs.ErrUnsupported},
	}
	for _, tt := range tests {
		_, err := Parse(tt.in)
		if !errors.Is(err, tt.want) {
			t.Errorf("Parse(%q) error = %v, want %v", tt.in, err, tt.want)
		}
	}
}

func TestIdentifier(t *testing.T) {
	r, _ := Parse("quay.io/a/b:tag@" + dgst)
	if r.Identifier() != dgst {
		t.Fatalf("Identifier = %q, want the digest", r.Identifier())
	}
	if r.Repository().String() != "quay.io/a/b" {
		t.Fatalf("Repository = %q", r.Repository())
	}
	r, _ = Parse("quay.io/a/b")
	if r.Identifier() != "latest" || r.Digest != digest.Digest("") {
		t.Fatalf("Identifier = %q", r.Identifier())
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"busybox", "docker://quay.io/a/b:t@" + dgst, "oci:/x:y", "oci:a", "localhost:5000/a", "dir:/x", "docker:x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		r, err := Parse(s)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("Parse(%q): unclassified error %v", s, err)
			}
			return
		}
		again, err := Parse(r.String())
		if err != nil || again != r {
			t.Fatalf("Parse(%q) = %+v; canonical %q re-parses to %+v, %v", s, r, r.String(), again, err)
		}
		if r.Transport == Docker && (r.Domain == "" || r.Path == "" || (r.Tag == "" && r.Digest == "")) {
			t.Fatalf("Parse(%q) = incomplete %+v", s, r)
		}
	})
}
