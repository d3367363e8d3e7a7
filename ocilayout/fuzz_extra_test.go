package ocilayout

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
)

// FuzzResolve: an OCI layout handed to kura import or pull is untrusted. The fuzzer writes
// index.json, one manifest and one config; "MANIFEST" in the index and "CONFIG" in the manifest
// are replaced by the digests of the blobs written, so the fuzzer can reach past the first
// lookups. Resolve must never panic, and what it returns must be verified: the manifest bytes
// hash to the descriptor, the config bytes to the manifest's config digest. BlobPath never
// leaves the layout.
func FuzzResolve(f *testing.F) {
	const manifest = `{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"CONFIG","size":SIZE},"layers":[]}`
	const config = `{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}`
	const index = `{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"MANIFEST","size":SIZE,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}`
	f.Add([]byte(index), []byte(manifest), []byte(config), "v1")
	f.Add([]byte(index), []byte(manifest), []byte(config), "")
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"MANIFEST","size":SIZE}]}`),
		[]byte(`{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"MANIFEST","size":1}]}`), []byte(config), "")
	f.Add([]byte(`{"schemaVersion":2,"manifests":[{"digest":"sha256:../../../etc/passwd","size":1}]}`), []byte(manifest), []byte(config), "")
	f.Fuzz(func(t *testing.T, idx, man, cfg []byte, tag string) {
		if len(idx)+len(man)+len(cfg) > 1<<16 {
			return
		}
		dir := t.TempDir()
		w, err := Create(dir)
		if err != nil {
			t.Fatal(err)
		}
		cd, err := w.PutBlob(cfg)
		if err != nil {
			t.Fatal(err)
		}
		man = bytes.ReplaceAll(bytes.ReplaceAll(man, []byte("CONFIG"), []byte(cd.Digest)), []byte("SIZE"), []byte(itoa(cd.Size)))
		md, err := w.PutBlob(man)
		if err != nil {
			t.Fatal(err)
		}
		idx = bytes.ReplaceAll(bytes.ReplaceAll(idx, []byte("MANIFEST"), []byte(md.Digest)), []byte("SIZE"), []byte(itoa(md.Size)))
		if err := os.WriteFile(filepath.Join(dir, "index.json"), idx, 0o644); err != nil {
			t.Fatal(err)
		}
		l := Layout{Dir: dir}
		if ix, err := l.Index(); err == nil {
			for _, d := range ix.Manifests {
				if p, err := l.BlobPath(d.Digest); err == nil && !strings.HasPrefix(p, filepath.Join(dir, "blobs")+"/") {
					t.Fatalf("BlobPath(%q) = %s, outside the layout", d.Digest, p)
				}
			}
		}
		r, err := l.Resolve(tag)
		if err != nil {
			return
		}
		if digest.FromBytes(r.ManifestBytes) != r.Descriptor.Digest {
			t.Fatalf("manifest bytes do not hash to %s", r.Descriptor.Digest)
		}
		if digest.FromBytes(r.ConfigBytes) != r.Manifest.Config.Digest {
			t.Fatalf("config bytes do not hash to %s", r.Manifest.Config.Digest)
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
