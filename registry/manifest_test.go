package registry

import (
	"errors"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
)

const okDigest = "sha256:6c3c624b58dbbcd3c0dd82b4c53f04194d1247c6eebdaab7c610cf7d66709b3b"

func TestParseManifest(t *testing.T) {
	good := `{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"` + okDigest + `","size":10},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"` + okDigest + `","size":5}]}`
	m, err := ParseManifest([]byte(good))
	if err != nil || len(m.Layers) != 1 || m.Config.Size != 10 {
		t.Fatalf("ParseManifest: %+v %v", m, err)
	}
	for _, bad := range []string{
		`{`, `{"schemaVersion":1}`,
		`{"schemaVersion":2,"config":{"digest":"sha256:abc","size":1}}`,
		`{"schemaVersion":2,"config":{"digest":"` + okDigest + `","size":-1}}`,
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","config":{"digest":"` + okDigest + `","size":1}}`,
	} {
		if _, err := ParseManifest([]byte(bad)); !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnsupported) {
			t.Errorf("ParseManifest(%s) = %v", bad, err)
		}
	}
}

func TestSelectPlatform(t *testing.T) {
	d := func(os, arch, variant string) ocispec.Descriptor {
		return ocispec.Descriptor{Digest: okDigest, Platform: &ocispec.Platform{OS: os, Architecture: arch, Variant: variant}, Annotations: map[string]string{"n": os + arch + variant}}
	}
	idx := ocispec.Index{Manifests: []ocispec.Descriptor{{Digest: okDigest}, d("linux", "arm", "v6"), d("linux", "arm", ""), d("linux", "arm64", ""), d("windows", "amd64", "")}}
	for _, tc := range []struct {
		want ocispec.Platform
		name string
	}{
		{ocispec.Platform{OS: "linux", Architecture: "arm"}, "linuxarmv6"},
		{ocispec.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}, "linuxarm"},
		{ocispec.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}, "linuxarm64"},
		{ocispec.Platform{OS: "windows", Architecture: "amd64", Variant: "v1"}, "windowsamd64"},
	} {
		got, err := SelectPlatform(idx, tc.want)
		if err != nil || got.Annotations["n"] != tc.name {
			t.Errorf("SelectPlatform(%+v) = %v, %v; want %s", tc.want, got.Annotations, err, tc.name)
		}
	}
	if _, err := SelectPlatform(idx, ocispec.Platform{OS: "linux", Architecture: "amd64"}); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing platform: %v", err)
	}
}
