package registry

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit"
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

// jsonSeeds adds the JSON documents of the module's testdata (OCI layouts, descriptors) and a few
// hostile ones as fuzz seeds.
func jsonSeeds(f *testing.F) {
	for _, s := range []string{
		`{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"digest":"` + okDigest + `","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}`,
		`{"schemaVersion":2,"config":{"digest":"` + okDigest + `","size":1},"layers":[{"digest":"` + okDigest + `","size":-1}]}`,
		`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../etc","size":7}]}`,
		`{"schemaVersion":1}`, `null`, `[]`, `{"schemaVersion":2e999}`,
	} {
		f.Add([]byte(s))
	}
	dir, err := testkit.FindModuleRoot()
	if err != nil {
		f.Fatal(err)
	}
	filepath.WalkDir(filepath.Join(dir, "testdata"), func(p string, d os.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil
		}
		if info, err := d.Info(); err == nil && info.Size() < 1<<16 {
			if b, err := os.ReadFile(p); err == nil && json.Valid(b) {
				f.Add(b)
			}
		}
		return nil
	})
}

// FuzzParseManifest: manifests come from registries untrusted. Parsing never panics, fails only
// with the package's error classes, and accepts only valid descriptors.
func FuzzParseManifest(f *testing.F) {
	jsonSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseManifest(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		if m.SchemaVersion != 2 || len(m.Layers) > maxLayers {
			t.Fatalf("accepted schema %d with %d layers", m.SchemaVersion, len(m.Layers))
		}
		for _, d := range append(m.Layers, m.Config) {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("accepted descriptor %+v", d)
			}
		}
	})
}

// FuzzParseIndex: the same for indexes; every accepted entry's own platform selects an entry.
func FuzzParseIndex(f *testing.F) {
	jsonSeeds(f)
	f.Fuzz(func(t *testing.T, b []byte) {
		idx, err := ParseIndex(b)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("unclassified error %v", err)
			}
			return
		}
		for _, d := range idx.Manifests {
			if d.Digest.Validate() != nil || d.Size < 0 {
				t.Fatalf("accepted descriptor %+v", d)
			}
			if d.Platform != nil {
				if got, err := SelectPlatform(idx, *d.Platform); err != nil || got.Platform == nil {
					t.Fatalf("platform %+v of an entry not selectable: %v", *d.Platform, err)
				}
			}
		}
	})
}
