package auth

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/kura-oci/kura/errdefs"
)

// helper installs docker-credential-NAME as a shell script on PATH.
func helper(t *testing.T, name, script string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "bin")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, helperPrefix+name), []byte("#!/bin/sh\n"+script), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+":"+os.Getenv("PATH"))
}

func TestHelperGet(t *testing.T) {
	helper(t, "pw", `read s; [ "$1" = get ] && [ "$s" = reg.example ] && echo '{"Username":"u","Secret":"p"}'`)
	helper(t, "tok", `echo '{"Username":"<token>","Secret":"refresh"}'`)
	helper(t, "none", `echo "credentials not found in native keychain"; exit 1`)
	helper(t, "broken", `echo "keyring locked" >&2; exit 3`)
	helper(t, "bomb", `yes | head -c 2000000`)
	for _, c := range []struct {
		name string
		want Credential
		err  string
	}{
		{"pw", Credential{Username: "u", Password: "p"}, ""},
		{"tok", Credential{IdentityToken: "refresh"}, ""},
		{"none", Credential{}, ""},
		{"broken", Credential{}, "keyring locked"},
		{"bomb", Credential{}, "over"},
		{"absent", Credential{}, "not found"},
	} {
		got, err := HelperGet(c.name, "reg.example")
		if c.err == "" && (err != nil || got != c.want) || c.err != "" && (err == nil || !strings.Contains(err.Error(), c.err)) {
			t.Errorf("%s: got %+v, %v; want %+v, %q", c.name, got, err, c.want, c.err)
		}
	}
	if _, err := HelperGet("../../bin/sh", "x"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("path as helper name: %v, want ErrInvalid", err)
	}
}

// TestHelperOrder: within a file, credHelpers wins over auths, which win over credsStore; a
// helper with nothing for the registry lets the search go on; an auth file naming a path as
// helper is refused.
func TestHelperOrder(t *testing.T) {
	root := env(t)
	helper(t, "per", `read s; [ "$s" = reg.example ] && echo '{"Username":"per","Secret":"x"}' && exit 0; echo "credentials not found"; exit 1`)
	helper(t, "store", `echo '{"Username":"store","Secret":"x"}'`)
	primary := filepath.Join(root, "run", "containers", "auth.json")
	writeFile := func(body string) {
		if err := os.MkdirAll(filepath.Dir(primary), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(primary, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	writeFile(`{"auths":{"reg.example":{"auth":"ZmlsZTp4"},"other.example":{"auth":"ZmlsZTp4"}},"credHelpers":{"reg.example":"per","other.example":"per"},"credsStore":"store"}`)
	k := NewKeychain()
	for repo, want := range map[string]string{"reg.example/a": "per credential helper per", "other.example/a": "file auth file " + primary, "third.example/a": "store credential helper store"} {
		c, src, err := k.Lookup(repo)
		if got := c.Username + " " + src.String(); err != nil || got != want {
			t.Errorf("%s: %q, %v; want %q", repo, got, err, want)
		}
	}
	writeFile(`{"credHelpers":{"reg.example":"/bin/sh"}}`)
	if _, _, err := k.Lookup("reg.example/a"); !errors.Is(err, errdefs.ErrInvalid) {
		t.Errorf("path as helper: %v, want ErrInvalid", err)
	}
}

// TestStoreErase: login's writes keep the file's other fields, are 0600, and logout removes the
// entry (any spelling of its key); a second logout is ErrNotFound.
func TestStoreErase(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new", "auth.json")
	if err := CheckAuthFile(path); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("CheckAuthFile(missing) = %v", err)
	}
	if _, err := Store(path, "reg.example", Credential{Username: "u", Password: "p"}); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("stat: %v %v", fi, err)
	}
	if err := os.WriteFile(path, []byte(`{"auths":{"https://reg.example/v1/":{"auth":"dTpw"},"keep.example":{"auth":"azpr"}},"credsStore":"","x-custom":{"a":1}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Erase(path, "reg.example"); err != nil {
		t.Fatal(err)
	}
	if _, err := Erase(path, "reg.example"); !errors.Is(err, errdefs.ErrNotFound) {
		t.Fatalf("second erase: %v", err)
	}
	var doc struct {
		Auths  map[string]any     `json:"auths"`
		Custom map[string]float64 `json:"x-custom"`
	}
	data, _ := os.ReadFile(path)
	if err := json.Unmarshal(data, &doc); err != nil || doc.Custom["a"] != 1 || doc.Auths["keep.example"] == nil || len(doc.Auths) != 1 {
		t.Fatalf("after erase: %s (%v)", data, err)
	}
	if err := EraseAll(path); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(path); strings.Contains(string(data), "keep.example") || !strings.Contains(string(data), "x-custom") {
		t.Fatalf("after erase all: %s", data)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Fatalf("temp files left: %v", entries)
	}
}

// TestHelperDockerHub: for docker.io a helper is also asked under docker login's server URL.
func TestHelperDockerHub(t *testing.T) {
	helper(t, "hub", `read s; [ "$s" = https://index.docker.io/v1/ ] && echo '{"Username":"hub","Secret":"x"}' && exit 0; echo "credentials not found"; exit 1`)
	if c, err := helperGet("hub", "docker.io"); err != nil || c.Username != "hub" {
		t.Fatalf("docker.io: %+v, %v", c, err)
	}
	if c, err := helperGet("hub", "quay.io"); err != nil || !c.IsZero() {
		t.Fatalf("quay.io: %+v, %v", c, err)
	}
}
