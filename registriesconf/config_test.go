package registriesconf

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func load(t *testing.T, content string) *Config {
	t.Helper()
	p := filepath.Join(t.TempDir(), "registries.conf")
	write(t, p, content)
	c, err := Load(Paths{File: p})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// Drop-ins apply in lexical order, system directory before user directory: later search lists
// and modes replace, aliases override one by one (empty removes), registries replace by prefix.
func TestLoadMergesDropIns(t *testing.T) {
	dir := t.TempDir()
	main := filepath.Join(dir, "registries.conf")
	write(t, main, `
unqualified-search-registries = ["a.example"]
short-name-mode = "enforcing"
[aliases]
"one" = "a.example/one"
"two" = "a.example/two"
[[registry]]
location = "a.example"
insecure = true
`)
	sys, user := filepath.Join(dir, "sys.d"), filepath.Join(dir, "user.d")
	write(t, filepath.Join(sys, "20-b.conf"), `unqualified-search-registries = ["c.example"]`)
	write(t, filepath.Join(sys, "10-a.conf"), `unqualified-search-registries = ["b.example"]`)
	write(t, filepath.Join(sys, "ignored.txt"), `this is not read`)
	write(t, filepath.Join(user, "x.conf"), `
[aliases]
"one" = ""
"two" = "d.example/two"
[[registry]]
location = "a.example"
blocked = true
`)
	c, err := Load(Paths{File: main, DropIns: []string{sys, user, filepath.Join(dir, "missing.d")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(c.UnqualifiedSearch, ","); got != "c.example" {
		t.Errorf("search registries %q, want the last drop-in's", got)
	}
	if c.ShortNameMode != Enforcing {
		t.Errorf("short-name-mode %q kept from the main file?", c.ShortNameMode)
	}
	if _, ok := c.Aliases["one"]; ok || c.Aliases["two"] != "d.example/two" {
		t.Errorf("aliases %v", c.Aliases)
	}
	if len(c.Registries) != 1 || !c.Registries[0].Blocked || c.Registries[0].Insecure {
		t.Errorf("registries %+v: want the drop-in's entry to replace the main file's", c.Registries)
	}
	if len(c.Files) != 4 {
		t.Errorf("files read %v", c.Files)
	}
}

func TestLoadRefusesBadFiles(t *testing.T) {
	for _, tc := range []struct{ name, content string }{
		{"toml", `unqualified-search-registries = [`},
		{"mode", `short-name-mode = "sometimes"`},
		{"scheme", "[[registry]]\nlocation = \"https://a.example\""},
		{"no location", "[[registry]]\nprefix = \"a.example\""},
		{"nothing", "[[registry]]\ninsecure = true"},
		{"mirror", "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\ninsecure = true"},
		{"pull-from-mirror", "[[registry]]\nlocation = \"a.example\"\n[[registry.mirror]]\nlocation = \"m.example\"\npull-from-mirror = \"sometimes\""},
		{"alias qualified key", "[aliases]\n\"a.example/x\" = \"b.example/x\""},
		{"alias short value", "[aliases]\n\"x\" = \"x\""},
		{"alias tagged value", "[aliases]\n\"x\" = \"b.example/x:1\""},
		{"search path", `unqualified-search-registries = ["not a host"]`},
	} {
		p := filepath.Join(t.TempDir(), "registries.conf")
		write(t, p, tc.content)
		if _, err := Load(Paths{File: p}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), p) {
			t.Errorf("%s: err = %v, want ErrInvalid naming the file", tc.name, err)
		}
	}
	p := filepath.Join(t.TempDir(), "registries.conf")
	write(t, p, "[registries.search]\nregistries = [\"a.example\"]")
	if _, err := Load(Paths{File: p}); !errors.Is(err, errdefs.ErrUnsupported) {
		t.Errorf("version 1 file: err = %v, want ErrUnsupported", err)
	}
}

func TestMatchPrefix(t *testing.T) {
	for _, tc := range []struct {
		ref, prefix string
		want        int
	}{
		{"a.example/x:1", "a.example", 9},
		{"a.example/x:1", "a.example/x", 11},
		{"a.example/xy:1", "a.example/x", -1},
		{"a.example:5000/x", "a.example", 9}, // as containers/image (documented there as unintended)
		{"a.example/x@sha256:00", "a.example/x", 11},
		{"b.a.example/x", "*.a.example", 11},
		{"a.example/x", "*.a.example", -1},
		{"b.a.example:5000/x", "*.a.example", 11},
	} {
		if got := matchPrefix(tc.ref, tc.prefix); got != tc.want {
			t.Errorf("matchPrefix(%q, %q) = %d, want %d", tc.ref, tc.prefix, got, tc.want)
		}
	}
}

func sourceRefs(t *testing.T, c *Config, input string) string {
	t.Helper()
	sources, err := c.PullSources(input)
	if err != nil {
		t.Fatalf("%s: %v", input, err)
	}
	var s []string
	for _, src := range sources {
		r := strings.TrimPrefix(src.Ref.String(), "docker://")
		if src.Insecure {
			r += " (insecure)"
		}
		s = append(s, r)
	}
	return strings.Join(s, ", ")
}

// The longest prefix wins; mirrors come first (as pull-from-mirror allows), then the
// rewritten location; the stored name stays the user's.
func TestPullSources(t *testing.T) {
	c := load(t, `
unqualified-search-registries = ["a.example", "b.example"]
[aliases]
"app" = "c.example/team/app"
[[registry]]
prefix = "c.example"
location = "c.example"
[[registry]]
prefix = "c.example/team"
location = "internal.example:5000/mirrored/team"
[[registry.mirror]]
location = "m1.example/team"
insecure = true
[[registry.mirror]]
location = "m2.example/team"
pull-from-mirror = "digest-only"
[[registry.mirror]]
location = "m3.example/team"
pull-from-mirror = "tag-only"
[[registry]]
prefix = "*.blocked.example"
blocked = true
`)
	const dgst = "sha256:0123456789012345678901234567890123456789012345678901234567890123"
	for input, want := range map[string]string{
		"c.example/team/app:1": "m1.example/team/app:1 (insecure), m3.example/team/app:1, internal.example:5000/mirrored/team/app:1",
		"c.example/team/app@" + dgst: "m1.example/team/app@" + dgst + " (insecure), m2.example/team/app@" + dgst +
			", internal.example:5000/mirrored/team/app@" + dgst,
		"c.example/other:2":   "c.example/other:2",
		"app:3":               "m1.example/team/app:3 (insecure), m3.example/team/app:3, internal.example:5000/mirrored/team/app:3",
		"busybox":             "a.example/busybox:latest, b.example/busybox:latest",
		"docker://busybox":    "docker.io/library/busybox:latest",
		"x.blocked.example/a": "",
	} {
		if want == "" {
			_, err := c.PullSources(input)
			if !errors.Is(err, errdefs.ErrPermission) || !strings.Contains(err.Error(), "blocked") {
				t.Errorf("%s: err = %v, want blocked", input, err)
			}
			continue
		}
		if got := sourceRefs(t, c, input); got != want {
			t.Errorf("%s:\n got %s\nwant %s", input, got, want)
		}
	}
	sources, _ := c.PullSources("app:3")
	for _, s := range sources {
		if s.Name.String() != "docker://c.example/team/app:3" {
			t.Errorf("source %s: stored as %s, want the alias's name", s.Ref, s.Name)
		}
	}
	if err := c.PushTarget(sources[0].Name); err != nil {
		t.Errorf("push to an open registry: %v", err)
	}
}

func TestShortNameModes(t *testing.T) {
	base := "unqualified-search-registries = [\"a.example\", \"b.example\"]\n"
	if _, err := load(t, base+`short-name-mode = "enforcing"`).PullSources("busybox"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "ambiguous") {
		t.Errorf("enforcing, two candidates: err = %v", err)
	}
	if got := sourceRefs(t, load(t, base+`short-name-mode = "disabled"`), "busybox"); got != "a.example/busybox:latest, b.example/busybox:latest" {
		t.Errorf("disabled: %s", got)
	}
	one := load(t, "unqualified-search-registries = [\"a.example\"]\nshort-name-mode = \"enforcing\"")
	if got := sourceRefs(t, one, "ns/busybox:1"); got != "a.example/ns/busybox:1" {
		t.Errorf("enforcing, one candidate: %s", got)
	}
	// docker.io, the common search registry, with Docker Hub's library/ namespace.
	hub := load(t, "unqualified-search-registries = [\"docker.io\", \"quay.io\"]\n[aliases]\n\"alp\" = \"docker.io/alpine\"\n")
	if got := sourceRefs(t, hub, "busybox:1"); got != "docker.io/library/busybox:1, quay.io/busybox:1" {
		t.Errorf("docker.io search: %s", got)
	}
	if got := sourceRefs(t, hub, "alp"); got != "docker.io/library/alpine:latest" {
		t.Errorf("docker.io alias: %s", got)
	}
	if _, err := load(t, "").PullSources("busybox"); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "did not resolve") {
		t.Errorf("no search registries: err = %v", err)
	}
	for _, s := range []string{"localhost/x", "a.b/x", "a:5000/x", "Upper/x"} {
		if IsShortName(s) {
			t.Errorf("%s is qualified", s)
		}
	}
	for _, s := range []string{"x", "x:1", "ns/x@sha256:00", "ns/x"} {
		if !IsShortName(s) {
			t.Errorf("%s is short", s)
		}
	}
}

func TestDefaultPaths(t *testing.T) {
	home := t.TempDir()
	env := map[string]string{}
	getenv := func(k string) string { return env[k] }
	if p := DefaultPaths(getenv, home); p.File != "/etc/containers/registries.conf" || len(p.DropIns) != 2 {
		t.Errorf("default: %+v", p)
	}
	user := filepath.Join(home, ".config/containers/registries.conf")
	write(t, user, "")
	if p := DefaultPaths(getenv, home); p.File != user || len(p.DropIns) != 1 {
		t.Errorf("user file: %+v", p)
	}
	env["CONTAINERS_REGISTRIES_CONF"] = filepath.Join(home, "missing.conf")
	p := DefaultPaths(getenv, home)
	if p.File != env["CONTAINERS_REGISTRIES_CONF"] || !p.FileRequired || len(p.DropIns) != 2 {
		t.Errorf("$CONTAINERS_REGISTRIES_CONF: %+v", p)
	}
	// A file the user names must exist (containers/image's rule); the default ones need not.
	if _, err := Load(p); !errors.Is(err, errdefs.ErrNotFound) {
		t.Errorf("missing $CONTAINERS_REGISTRIES_CONF: err = %v, want ErrNotFound", err)
	}
	if _, err := Load(Paths{File: p.File}); err != nil {
		t.Errorf("missing default file: %v", err)
	}
}

// podman's recorded prompt choices (short-name-aliases.conf) win over [aliases]; lookups use the
// name as typed.
func TestAliasCache(t *testing.T) {
	dir := t.TempDir()
	main, cache := filepath.Join(dir, "registries.conf"), filepath.Join(dir, "short-name-aliases.conf")
	write(t, main, "[aliases]\n\"app\" = \"a.example/app\"\n\"tool\" = \"a.example/tool\"\n\"library/x\" = \"a.example/x\"\n")
	write(t, cache, "[aliases]\n\"app\" = \"b.example/chosen/app\"\n")
	c, err := Load(Paths{File: main, AliasCache: cache})
	if err != nil {
		t.Fatal(err)
	}
	for input, want := range map[string]string{
		"app:1":       "b.example/chosen/app:1",
		"tool":        "a.example/tool:latest",
		"library/x:2": "a.example/x:2",
	} {
		if got := sourceRefs(t, c, input); got != want {
			t.Errorf("%s: got %s, want %s", input, got, want)
		}
	}
	write(t, cache, "[aliases]\n\"app\" = \"not-qualified\"\n")
	if _, err := Load(Paths{File: main, AliasCache: cache}); !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), cache) {
		t.Errorf("bad cache: err = %v, want ErrInvalid naming it", err)
	}
}

func writeString(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }
