package registry_test

import (
	"testing"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
	"github.com/kura-oci/kura/source/sourcetest"
)

// TestSourceSuite runs the shared source suite over a repository of a real in-process registry.
func TestSourceSuite(t *testing.T) {
	sourcetest.Run(t, func(t *testing.T, f sourcetest.Fixture) sourcetest.Subject {
		reg := registrytest.New(t)
		reg.PushBlob(t, repoPath, f.Blob)
		reg.PushBlob(t, repoPath, f.Config)
		reg.PushManifest(t, repoPath, "v1", f.ManifestDesc.MediaType, f.Manifest)
		ref, err := imageref.Parse("docker://" + reg.Host + "/" + repoPath + ":v1")
		if err != nil {
			t.Fatal(err)
		}
		c := (&fixture{reg: reg}).client()
		return sourcetest.Subject{Source: registry.NewSource(c, ref), Name: reg.Host + "/" + repoPath + ":v1"}
	})
}
