package hoststoml

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/registriesconf"
)

func writeHosts(t *testing.T, dir, host, body string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, host), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, host, "hosts.toml"), []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoad: server and mirrors (in file order, capabilities, plain HTTP, skip_verify) map to a
// registries.conf entry; what cannot map is left out with a note; a directory without
// hosts.toml (certificates only) and a missing directory are empty.
func TestLoad(t *testing.T) {
	dir := t.TempDir()
	writeHosts(t, dir, "docker.io", `server = "https://registry-1.docker.io"

[host."http://10.0.0.9:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example.com"]
  capabilities = ["pull"]
  skip_verify = true

[host."https://path.example.com/some/ns"]

[host."https://push.example.com"]
  capabilities = ["push"]
`)
	writeHosts(t, dir, "registry.local:5000", `server = "http://registry.local:5000"`)
	os.MkdirAll(filepath.Join(dir, "certs-only.example.com"), 0o755)
	os.MkdirAll(filepath.Join(dir, "_default"), 0o755)
	regs, notes, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	want := []registriesconf.Registry{
		{Prefix: "docker.io", Location: "registry-1.docker.io", Mirrors: []registriesconf.Mirror{
			{Location: "10.0.0.9:5000", Insecure: true},
			{Location: "mirror.example.com", Insecure: true, PullFromMirror: registriesconf.PullDigestOnly}}},
		{Prefix: "registry.local:5000", Location: "registry.local:5000", Insecure: true},
	}
	if !reflect.DeepEqual(regs, want) {
		t.Fatalf("Load:\n got %+v\nwant %+v", regs, want)
	}
	if len(notes) != 3 {
		t.Errorf("notes %q, want three: _default, the host with a path, the push-only host", notes)
	}
	if r, n, err := Load(filepath.Join(dir, "missing")); err != nil || r != nil || n != nil {
		t.Errorf("missing directory: %v %v %v", r, n, err)
	}
	writeHosts(t, dir, "bad.example.com", "server = [")
	if _, _, err := Load(dir); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("a hosts.toml that does not parse: %v, want ErrInvalid", err)
	}
}

// TestMirrorsPull: the entries, added to a registries.conf configuration, make a pull try the
// mirrors first, then the server; a registries.conf entry of the same host wins.
func TestMirrorsPull(t *testing.T) {
	dir := t.TempDir()
	writeHosts(t, dir, "example.com", `server = "https://upstream.example.com"
[host."http://mirror.local:5000"]
`)
	writeHosts(t, dir, "mine.example.com", `[host."http://other.local"]`)
	conf := filepath.Join(t.TempDir(), "registries.conf")
	os.WriteFile(conf, []byte("[[registry]]\nlocation = \"mine.example.com\"\n"), 0o644)
	c, err := registriesconf.Load(registriesconf.Paths{File: conf})
	if err != nil {
		t.Fatal(err)
	}
	regs, _, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range regs {
		added, err := c.AddDefault(r)
		if err != nil || added != (r.Prefix == "example.com") {
			t.Fatalf("AddDefault(%s) = %v, %v", r.Prefix, added, err)
		}
	}
	var got []string
	srcs, err := c.PullSources("example.com/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range srcs {
		got = append(got, s.Ref.String())
	}
	want := []string{"docker://mirror.local:5000/app:v1", "docker://upstream.example.com/app:v1"}
	if !reflect.DeepEqual(got, want) || !srcs[0].Insecure || srcs[1].Insecure {
		t.Fatalf("pull sources %v (%+v), want %v, the mirror insecure", got, srcs, want)
	}
	if srcs, _ := c.PullSources("mine.example.com/app:v1"); len(srcs) != 1 {
		t.Fatalf("registries.conf's own entry did not win: %+v", srcs)
	}
}
