package auth

import (
	"encoding/base64"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"

	"github.com/kura-oci/kura/errdefs"
)

// env isolates a test from the machine's real auth files and returns the temp root.
func env(t *testing.T) string {
	root := t.TempDir()
	t.Setenv("HOME", filepath.Join(root, "home"))
	t.Setenv("XDG_RUNTIME_DIR", filepath.Join(root, "run"))
	t.Setenv("XDG_CONFIG_HOME", filepath.Join(root, "config"))
	t.Setenv("REGISTRY_AUTH_FILE", "")
	t.Setenv("DOCKER_CONFIG", "")
	return root
}

func writeAuth(t *testing.T, path string, legacy bool, entries map[string]string) {
	t.Helper()
	body := "{"
	first := true
	for k, up := range entries {
		if !first {
			body += ","
		}
		first = false
		body += `"` + k + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(up)) + `"}`
	}
	body += "}"
	if !legacy {
		body = `{"auths":` + body + `}`
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}

func lookup(t *testing.T, k *Keychain, repo string) (string, string) {
	t.Helper()
	c, src, err := k.Lookup(repo)
	if err != nil {
		t.Fatalf("Lookup(%q): %v", repo, err)
	}
	if c.IsZero() {
		return "", src.String()
	}
	return c.Username + ":" + c.Password, src.String()
}

func TestLookupOrder(t *testing.T) {
	root := env(t)
	home := filepath.Join(root, "home")
	files := []struct {
		path   string
		legacy bool
	}{
		{filepath.Join(root, "run", "containers", "auth.json"), false},
		{filepath.Join(root, "config", "containers", "auth.json"), false},
		{filepath.Join(home, ".docker", "config.json"), false},
		{filepath.Join(home, ".dockercfg"), true},
	}
	// Each file knows reg.example; removing the winner exposes the next one.
	for i, f := range files {
		writeAuth(t, f.path, f.legacy, map[string]string{"reg.example": "user" + string(rune('0'+i)) + ":pw"})
	}
	k := NewKeychain()
	for i, f := range files {
		got, src := lookup(t, k, "reg.example/app")
		want := "user" + string(rune('0'+i)) + ":pw"
		if got != want || src != "auth file "+f.path {
			t.Fatalf("step %d: got %q from %q, want %q from %q", i, got, src, want, f.path)
		}
		os.Remove(f.path)
	}
	if got, _ := lookup(t, k, "reg.example/app"); got != "" {
		t.Fatalf("with no files got %q, want anonymous", got)
	}
}

func TestOverrides(t *testing.T) {
	root := env(t)
	primary := filepath.Join(root, "run", "containers", "auth.json")
	writeAuth(t, primary, false, map[string]string{"reg.example": "primary:pw"})
	xdg := filepath.Join(root, "config", "containers", "auth.json")
	writeAuth(t, xdg, false, map[string]string{"other.example": "xdg:pw"})
	envFile := filepath.Join(root, "env.json")
	writeAuth(t, envFile, false, map[string]string{"reg.example": "env:pw"})
	flagFile := filepath.Join(root, "flag.json")
	writeAuth(t, flagFile, false, map[string]string{"reg.example": "flag:pw"})

	t.Setenv("REGISTRY_AUTH_FILE", envFile)
	if got, src := lookup(t, NewKeychain(), "reg.example/a"); got != "env:pw" || src != "auth file "+envFile {
		t.Fatalf("REGISTRY_AUTH_FILE: got %q from %q", got, src)
	}
	// The override replaces the primary file; the later files still apply.
	if got, _ := lookup(t, NewKeychain(), "other.example/a"); got != "xdg:pw" {
		t.Fatalf("after override, XDG file not consulted: %q", got)
	}
	if got, _ := lookup(t, NewKeychain(WithAuthFile(flagFile)), "reg.example/a"); got != "flag:pw" {
		t.Fatalf("--authfile: got %q", got)
	}
	if got, src := lookup(t, NewKeychain(WithAuthFile(flagFile), WithCreds("cli:secret:with:colons")), "reg.example/a"); got != "cli:secret:with:colons" || src != "--creds" {
		t.Fatalf("--creds: got %q from %q", got, src)
	}
	if _, _, err := NewKeychain(WithCreds(":pw")).Lookup("reg.example/a"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Fatalf("--creds with empty user: %v", err)
	}
}

func TestMostSpecificKeyAndDockerHub(t *testing.T) {
	root := env(t)
	writeAuth(t, filepath.Join(root, "run", "containers", "auth.json"), false, map[string]string{
		"quay.io":                     "host:pw",
		"quay.io/org":                 "org:pw",
		"quay.io/org/team/app":        "app:pw",
		"https://index.docker.io/v1/": "hub:pw",
	})
	k := NewKeychain()
	for repo, want := range map[string]string{
		"quay.io/org/team/app":     "app:pw",
		"quay.io/org/team/other":   "org:pw",
		"quay.io/orgx/a":           "host:pw",
		"quay.io":                  "host:pw",
		"docker.io/library/alpine": "hub:pw",
		"index.docker.io/x/y":      "hub:pw",
		"ghcr.io/a":                "",
	} {
		if got, _ := lookup(t, k, repo); got != want {
			t.Errorf("Lookup(%q) = %q, want %q", repo, got, want)
		}
	}
	// Through the authn.Keychain interface with a ggcr repository (Docker Hub is index.docker.io there).
	repo, _ := name.NewRepository("alpine")
	a, err := k.Resolve(repo)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := a.Authorization()
	if cfg.Username != "hub" || cfg.Password != "pw" {
		t.Fatalf("Resolve(%s) = %+v", repo, cfg)
	}
	anon, _ := k.Resolve(name.MustParseReference("ghcr.io/a/b").Context())
	if anon != authn.Anonymous {
		t.Fatalf("unknown registry should be anonymous, got %v", anon)
	}
}

func TestBadFiles(t *testing.T) {
	root := env(t)
	p := filepath.Join(root, "run", "containers", "auth.json")
	os.MkdirAll(filepath.Dir(p), 0o700)
	for _, body := range []string{`{"auths":`, `{"auths":{"r.io":{"auth":"!!"}}}`, `{"auths":{"r.io":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("nocolon")) + `"}}}`} {
		os.WriteFile(p, []byte(body), 0o600)
		if _, _, err := NewKeychain().Lookup("r.io/a"); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("file %s: err = %v, want ErrInvalid", body, err)
		}
	}
	// Identity tokens pass through.
	os.WriteFile(p, []byte(`{"auths":{"r.io":{"identitytoken":"tok"}}}`), 0o600)
	c, _, err := NewKeychain().Lookup("r.io/a")
	if err != nil || c.IdentityToken != "tok" {
		t.Fatalf("identity token: %+v %v", c, err)
	}
}

// FuzzLookup feeds arbitrary auth files to the lookup: it must fail only with ErrInvalid (or
// ErrNotFound for a credential helper that is not installed: PATH holds none) and never panic.
func FuzzLookup(f *testing.F) {
	root := f.TempDir()
	for _, k := range []string{"HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "DOCKER_CONFIG"} {
		f.Setenv(k, root)
	}
	f.Setenv("REGISTRY_AUTH_FILE", "")
	f.Setenv("PATH", root)
	f.Add([]byte(`{"credHelpers":{"r.io":"x"},"credsStore":"y"}`), "r.io/a")
	f.Add([]byte(`{"auths":{"r.io":{"auth":"dTpw"}}}`), "r.io/a/b")
	f.Add([]byte(`{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"},"docker.io":{"identitytoken":"t"}}}`), "docker.io/library/x")
	f.Add([]byte(`{"auths":{"r.io/a":{"username":"u","password":"p"}}}`), "r.io/a")
	f.Fuzz(func(t *testing.T, data []byte, repo string) {
		p := filepath.Join(t.TempDir(), "auth.json")
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		_, _, err := NewKeychain(WithAuthFile(p)).Lookup(repo)
		if err != nil && !errors.Is(err, errdefs.ErrInvalid) && !errors.Is(err, errdefs.ErrNotFound) {
			t.Fatalf("unclassified error %v", err)
		}
	})
}
