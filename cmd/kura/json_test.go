package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/registry/registrytest"
)

// docExamples reads docs/json.md: each "### `kura COMMAND`" heading is followed by a fenced JSON
// example of what COMMAND --json prints.
func docExamples(t *testing.T) map[string]any {
	t.Helper()
	b, err := os.ReadFile("../../docs/json.md")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile("(?s)### `kura ([^`]+)`.*?```json\n(.*?)```")
	ex := map[string]any{}
	for _, m := range re.FindAllStringSubmatch(string(b), -1) {
		var v any
		if err := json.Unmarshal([]byte(m[2]), &v); err != nil {
			t.Fatalf("docs/json.md, kura %s: %v", m[1], err)
		}
		ex[m[1]] = v
	}
	return ex
}

// kind names a JSON value's type; null is its own kind, which no output may have.
func kind(v any) string {
	switch v.(type) {
	case nil:
		return "null"
	case map[string]any:
		return "object"
	case []any:
		return "array"
	case string:
		return "string"
	case float64:
		return "number"
	case bool:
		return "boolean"
	}
	return fmt.Sprintf("%T", v)
}

// sameShape reports how got differs from the documented want: object keys (exactly the same
// set), value kinds, and the first element of arrays both have. Objects whose keys are data
// (maps such as annotations) are marked in the doc by an example with the key "…".
func sameShape(path string, want, got any) []string {
	if kind(want) != kind(got) {
		return []string{fmt.Sprintf("%s: %s, documented %s", path, kind(got), kind(want))}
	}
	var diffs []string
	switch w := want.(type) {
	case map[string]any:
		g := got.(map[string]any)
		if _, ok := w["…"]; ok {
			for k, v := range g {
				diffs = append(diffs, sameShape(path+"."+k, w["…"], v)...)
			}
			return diffs
		}
		for k := range w {
			if _, ok := g[k]; !ok {
				diffs = append(diffs, path+"."+k+": documented, missing")
			}
		}
		for k, v := range g {
			if _, ok := w[k]; !ok {
				diffs = append(diffs, path+"."+k+": printed, not documented")
				continue
			}
			diffs = append(diffs, sameShape(path+"."+k, w[k], v)...)
		}
	case []any:
		g := got.([]any)
		if len(w) > 0 && len(g) > 0 {
			diffs = append(diffs, sameShape(path+"[0]", w[0], g[0])...)
		}
	}
	sort.Strings(diffs)
	return diffs
}

// TestJSONSchemas (issue 18): every command's --json output has the shape docs/json.md
// documents (camelCase field names, value kinds, no null), and every documented command is run.
func TestJSONSchemas(t *testing.T) {
	needRootCLI(t)
	examples := docExamples(t)
	bin := testkit.Kura(t)
	work := openTempDir(t)
	kura := cli{t: t, bin: bin}
	reg := registrytest.New(t)
	creds := []string{"--creds", registrytest.Username + ":" + registrytest.Password, "--tls-verify=false"}
	imgTar := filepath.Join(work, "img.tar")
	writeTar(t, imgTar, map[string]string{"etc/a": "json schemas\n", "etc/b": strings.Repeat("b", 1000)}, false)
	src, st := filepath.Join(work, "src"), filepath.Join(work, "store")
	saved := filepath.Join(work, "saved.tar")
	writeDockerArchive(t, saved, imgTar, "localhost/saved:v1")
	ref := reg.Host + "/json/app:v1"
	layout := "oci:" + filepath.Join(work, "layout") + ":v1"
	blob, desc := filepath.Join(work, "layer.zst"), filepath.Join(work, "layer.json")
	co, mnt := filepath.Join(work, "co"), filepath.Join(work, "mnt")
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { kura.run("--root", st, "umount", mnt) })

	runs := []struct {
		doc  string
		args []string
	}{
		{"import FILE.tar", []string{"--root", src, "import", imgTar, "img"}},
		{"push", append([]string{"--root", src, "push", "img", ref}, creds...)},
		{"copy", append([]string{"copy", "docker://" + ref, layout}, creds...)},
		{"copy --all", append([]string{"copy", "--all", "docker://" + ref, "oci:" + filepath.Join(work, "all") + ":v1"}, creds...)},
		{"pull", append([]string{"--root", st, "pull", ref}, creds...)},
		{"import oci:", []string{"--root", st, "import", layout, "fromlayout"}},
		{"load", []string{"--root", st, "load", "-i", saved}},
		{"images", []string{"--root", st, "images"}},
		{"checkout", []string{"--root", st, "checkout", "img2", co}},
		{"mount", []string{"--root", st, "mount", "fromlayout", mnt}},
		{"ps", []string{"--root", st, "ps"}},
		{"checkout --release", []string{"--root", st, "checkout", "--release", co}},
		{"umount", []string{"--root", st, "umount", mnt}},
		{"df", []string{"--root", st, "df"}},
		{"df -v", []string{"--root", st, "df", "-v"}},
		{"inspect", []string{"--root", st, "inspect", "img2"}},
		{"inspect", append([]string{"inspect", "docker://" + ref}, creds...)},
		{"rmi", []string{"--root", st, "rmi", "fromlayout", "img2"}},
		{"gc", []string{"--root", st, "gc"}},
		{"fsck", []string{"--root", st, "fsck"}},
		{"layer convert", []string{"layer", "convert", imgTar, blob}},
		{"layer inspect", []string{"layer", "inspect", blob}},
		{"layer verify", []string{"layer", "verify", blob, "--descriptor", desc}},
		{"version", []string{"version"}},
	}
	ran := map[string]bool{}
	for _, r := range runs {
		out := kura.ok(append([]string{"--json"}, r.args...)...)
		switch r.doc {
		case "pull":
			kura.ok("--root", st, "import", imgTar, "img2") // a second image, for checkout and rmi
		case "layer convert":
			if err := os.WriteFile(desc, []byte(out), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		ran[r.doc] = true
		want, ok := examples[r.doc]
		if !ok {
			t.Errorf("docs/json.md has no example for kura %s; it prints:\n%s", r.doc, out)
			continue
		}
		var got any
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Errorf("kura %s --json: %v\n%s", r.doc, err, out)
			continue
		}
		if diffs := sameShape("", want, got); len(diffs) > 0 {
			t.Errorf("kura %s --json differs from docs/json.md:\n%s\noutput:\n%s", r.doc, strings.Join(diffs, "\n"), out)
		}
	}
	for doc := range examples {
		if !ran[doc] {
			t.Errorf("docs/json.md documents kura %s, which the test does not run", doc)
		}
	}
}
