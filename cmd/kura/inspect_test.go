package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestInspect (issue 18): kura inspect reads an image from a registry (docker://), an OCI layout
// (oci:) or the store (a name or ID): --raw is the manifest exactly (its digest is the image's),
// --config the config exactly (its digest is the manifest's config), the summary names the same
// digest and layers everywhere, and --format takes skopeo's field names.
func TestInspect(t *testing.T) {
	work := t.TempDir()
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/i": "inspect\n"}, false)
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	st := filepath.Join(work, "store")
	kuraOK(t, st, "import", imgTar, "img")
	ref := reg.Host + "/inspect/app:v1"
	var pushed struct{ Image digest.Digest }
	if err := json.Unmarshal([]byte(kuraOK(t, st, append([]string{"--json", "push", "img", ref}, creds...)...)), &pushed); err != nil {
		t.Fatal(err)
	}
	layout := "oci:" + filepath.Join(work, "layout") + ":v1"
	kuraOK(t, st, append([]string{"copy", "docker://" + ref, layout}, creds...)...)
	kuraOK(t, st, append([]string{"pull", ref}, creds...)...)

	for _, src := range [][]string{
		append([]string{"inspect", "docker://" + ref}, creds...),
		{"inspect", layout},
		{"inspect", ref}, // the store's name of the pulled image
		{"inspect", pushed.Image.Encoded()[:12]},
	} {
		raw := kuraOK(t, st, append(src, "--raw")...)
		if got := digest.FromString(raw); got != pushed.Image {
			t.Fatalf("%s --raw: digest %s, want %s", strings.Join(src, " "), got, pushed.Image)
		}
		var m ocispec.Manifest
		if err := json.Unmarshal([]byte(raw), &m); err != nil || len(m.Layers) != 1 {
			t.Fatalf("%s --raw: %v\n%s", strings.Join(src, " "), err, raw)
		}
		if got := digest.FromString(kuraOK(t, st, append(src, "--config")...)); got != m.Config.Digest {
			t.Fatalf("%s --config: digest %s, want %s", strings.Join(src, " "), got, m.Config.Digest)
		}
		var sum inspectJSON
		if err := json.Unmarshal([]byte(kuraOK(t, st, src...)), &sum); err != nil {
			t.Fatal(err)
		}
		if sum.Digest != pushed.Image || len(sum.Layers) != 1 || sum.Layers[0] != m.Layers[0].Digest ||
			sum.LayersData[0].Size != m.Layers[0].Size || sum.Os == "" || sum.Architecture == "" {
			t.Fatalf("%s: %+v, want digest %s and layer %s", strings.Join(src, " "), sum, pushed.Image, m.Layers[0].Digest)
		}
		if strings.HasPrefix(src[1], "docker://") || strings.HasPrefix(src[1], "oci:") {
			if len(sum.RepoTags) != 0 {
				t.Fatalf("%s: repoTags %v, want none", src[1], sum.RepoTags)
			}
		} else if strings.Join(sum.RepoTags, ",") != ref {
			t.Fatalf("%s: repoTags %v, want [%s]", src[1], sum.RepoTags, ref)
		}
		out := kuraOK(t, st, append(src, "--format", "{{.Digest}} {{.Os}}/{{.Architecture}} {{len .Layers}}")...)
		if want := pushed.Image.String() + " " + sum.Os + "/" + sum.Architecture + " 1\n"; out != want {
			t.Fatalf("%s --format: %q, want %q", strings.Join(src, " "), out, want)
		}
	}
	for _, c := range []struct {
		code int
		args []string
	}{
		{errdefs.ExitNotFound, []string{"inspect", "no-such-image"}},
		{errdefs.ExitUnsupported, []string{"inspect", "docker-archive:" + imgTar}},
		{errdefs.ExitUsage, []string{"inspect", "img", "--raw", "--config"}},
		{errdefs.ExitUsage, []string{"inspect", "img", "--format", "{{.Nope}}"}},
	} {
		if _, errOut, code := kuraRun(t, st, c.args...); code != c.code {
			t.Errorf("kura %s: exit %d, want %d\n%s", strings.Join(c.args, " "), code, c.code, errOut)
		}
	}
}
