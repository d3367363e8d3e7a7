package store

import (
	"bytes"
	"errors"
	"strconv"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
)

// FuzzParseImage: manifests and configs come from registries and layouts. "CONFIG" and "SIZE"
// in the manifest are replaced by the config's digest and size so the fuzzer gets past the
// binding check. ParseImage never panics, fails with a sentinel, and what it accepts has one
// valid DiffID per manifest layer and the config the manifest names.
func FuzzParseImage(f *testing.F) {
	cfg := `{"architecture":"amd64","os":"linux","created":"2025-01-02T03:04:05Z","rootfs":{"type":"layers","diff_ids":["sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"]}}`
	man := `{"schemaVersion":2,"config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"CONFIG","size":SIZE},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+zstd","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2}]}`
	f.Add([]byte(man), []byte(cfg))
	f.Add([]byte(man), []byte(`{"rootfs":{"diff_ids":["sha256:../../x"]}}`))
	f.Add([]byte(man), []byte(`{"rootfs":{"diff_ids":[]}}`))
	f.Add([]byte(`{"config":{"digest":"CONFIG","size":SIZE},"layers":null}`), []byte(`{"rootfs":{"diff_ids":null},"created":"0001-01-01T00:00:00Z"}`))
	f.Fuzz(func(t *testing.T, manifest, config []byte) {
		manifest = bytes.ReplaceAll(manifest, []byte("CONFIG"), []byte(digest.FromBytes(config)))
		manifest = bytes.ReplaceAll(manifest, []byte("SIZE"), []byte(strconv.Itoa(len(config))))
		img, err := ParseImage(manifest, config)
		if err != nil {
			if !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrDigestMismatch) && !errors.Is(err, errdefs.ErrUnsupported) {
				t.Fatalf("error without a sentinel: %v", err)
			}
			return
		}
		if img.ID != digest.FromBytes(manifest) || img.Config != digest.FromBytes(config) {
			t.Fatalf("image %s config %s", img.ID, img.Config)
		}
		for _, d := range img.Layers {
			if d.Validate() != nil || d.Algorithm() != digest.SHA256 {
				t.Fatalf("accepted DiffID %q", d)
			}
		}
	})
}
