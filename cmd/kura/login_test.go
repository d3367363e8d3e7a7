package main

// Credentials like podman (issue 18): auth files, credential helpers, a missing --authfile,
// --creds USER without a terminal, errors that name the credential's source, login and logout.

import (
	"encoding/base64"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/registry/registrytest"
)

// credEnv runs kura with its own HOME, XDG_RUNTIME_DIR, XDG_CONFIG_HOME, an empty
// registries.conf, no $REGISTRY_AUTH_FILE or $DOCKER_CONFIG, a bin directory first on PATH (for
// credential helpers), and no controlling terminal (setsid), as in CI.
type credEnv struct {
	t                           *testing.T
	root, home, runtime, config string
	bin                         string
	extra                       []string // more NAME=VALUE
}

func newCredEnv(t *testing.T) *credEnv {
	t.Helper()
	dir := t.TempDir()
	e := &credEnv{t: t, root: filepath.Join(dir, "store"), home: filepath.Join(dir, "home"),
		runtime: filepath.Join(dir, "run"), config: filepath.Join(dir, "config"), bin: filepath.Join(dir, "bin")}
	for _, d := range []string{e.home, e.runtime, e.config, e.bin} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(dir, "registries.conf"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.extra = []string{"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(dir, "registries.conf")}
	return e
}

// primary is podman's default auth file for this environment.
func (e *credEnv) primary() string { return filepath.Join(e.runtime, "containers", "auth.json") }

func (e *credEnv) run(stdin string, args ...string) (string, int) {
	e.t.Helper()
	return e.runPlain(stdin, lifecycleKura(e.t), append([]string{"--root", e.root}, args...)...)
}

// runPlain runs any program in the environment.
func (e *credEnv) runPlain(stdin, name string, args ...string) (string, int) {
	e.t.Helper()
	cmd := exec.Command(name, args...)
	var env []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch name {
		case "HOME", "XDG_RUNTIME_DIR", "XDG_CONFIG_HOME", "REGISTRY_AUTH_FILE", "DOCKER_CONFIG", "PATH", "CONTAINERS_REGISTRIES_CONF":
			continue
		}
		env = append(env, kv)
	}
	cmd.Env = append(env, "HOME="+e.home, "XDG_RUNTIME_DIR="+e.runtime, "XDG_CONFIG_HOME="+e.config,
		"PATH="+e.bin+":"+os.Getenv("PATH"))
	cmd.Env = append(cmd.Env, e.extra...)
	cmd.Stdin = strings.NewReader(stdin)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		e.t.Fatalf("%s %s: %v", name, strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func (e *credEnv) ok(args ...string) string {
	e.t.Helper()
	out, code := e.run("", args...)
	if code != 0 {
		e.t.Fatalf("kura %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// fails runs kura and fails the test unless it exits with code and prints every one of want.
func (e *credEnv) fails(code int, want []string, args ...string) string {
	e.t.Helper()
	out, got := e.run("", args...)
	for _, w := range want {
		if got != code || !strings.Contains(out, w) {
			e.t.Fatalf("kura %s: exit %d, want %d and %q in the output:\n%s", strings.Join(args, " "), got, code, w, out)
		}
	}
	return out
}

func writeFile(t *testing.T, path, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
}

func authJSON(host, user, pass string) string {
	return `{"auths":{"` + host + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte(user+":"+pass)) + `"}}}`
}

// credRegistry is an htpasswd-style token registry (no anonymous pulls) holding app:v1.
func credRegistry(t *testing.T) (*registrytest.Registry, string) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "app", "v1", "hello from a private registry")
	return reg, reg.Host + "/app:v1"
}

var plainHTTP = "--tls-verify=false"

// TestAuthFailureNamesSource: a wrong password and no credentials are refused with exit 77 and
// messages that differ, each naming the source of what was sent.
func TestAuthFailureNamesSource(t *testing.T) {
	reg, ref := credRegistry(t)
	e := newCredEnv(t)
	e.fails(errdefs.ExitPermission, []string{"authentication failed for " + reg.Host, "(credentials: none)"}, "pull", plainHTTP, ref)
	e.fails(errdefs.ExitPermission, []string{"authentication failed for " + reg.Host, "(credentials from --creds)"},
		"pull", plainHTTP, "--creds", registrytest.Username+":wrong", ref)
	writeFile(t, e.primary(), authJSON(reg.Host, registrytest.Username, "wrong"), 0o600)
	t.Log(e.fails(errdefs.ExitPermission, []string{"(credentials from auth file " + e.primary() + ")"}, "pull", plainHTTP, ref))
	// The right password in the same file pulls.
	writeFile(t, e.primary(), authJSON(reg.Host, registrytest.Username, registrytest.Password), 0o600)
	e.ok("pull", plainHTTP, ref)
}

// TestAuthFileMissing: an auth file named by --authfile or $REGISTRY_AUTH_FILE that does not exist
// is an error (exit 3, not found) before any registry is contacted, as in podman.
func TestAuthFileMissing(t *testing.T) {
	_, ref := credRegistry(t)
	e := newCredEnv(t)
	missing := filepath.Join(e.home, "nope.json")
	e.fails(errdefs.ExitNotFound, []string{"checking authfile", missing}, "pull", plainHTTP, "--authfile", missing, ref)
	e.extra = append(e.extra, "REGISTRY_AUTH_FILE="+missing)
	e.fails(errdefs.ExitNotFound, []string{"checking authfile", missing}, "pull", plainHTTP, ref)
}

// TestCredsUserWithoutTerminal: --creds USER asks for the password on the terminal; without one
// (setsid) it is a command-line error saying so, not an empty password.
func TestCredsUserWithoutTerminal(t *testing.T) {
	_, ref := credRegistry(t)
	e := newCredEnv(t)
	e.fails(errdefs.ExitUsage, []string{"--creds " + registrytest.Username + " has no password", "no terminal"},
		"pull", plainHTTP, "--creds", registrytest.Username, ref)
}

// helperScript is a docker-credential-kuratest keeping one credential in $dir/stored.json, as
// the docker credential-helper protocol has it.
const helperScript = `#!/bin/sh
store=%DIR%/stored.json
case "$1" in
get)   read server; echo "$server" >> %DIR%/asked
       if [ -f "$store" ]; then cat "$store"; else echo "credentials not found in native keychain"; exit 1; fi ;;
store) cat > "$store" ;;
erase) read server; if [ -f "$store" ]; then rm "$store"; else echo "credentials not found in native keychain"; exit 1; fi ;;
*)     echo "unknown action $1" >&2; exit 2 ;;
esac
`

func installHelper(t *testing.T, e *credEnv) string {
	dir := filepath.Join(e.home, "helper")
	writeFile(t, filepath.Join(e.bin, "docker-credential-kuratest"), strings.ReplaceAll(helperScript, "%DIR%", dir), 0o755)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "stored.json")
}

// TestCredentialHelper: credHelpers (per registry, in docker's config.json) and credsStore (the
// default helper, in containers' auth.json) run docker-credential-NAME get; a wrong secret from
// the helper is reported as coming from it; "credentials not found" means anonymous.
func TestCredentialHelper(t *testing.T) {
	reg, ref := credRegistry(t)
	e := newCredEnv(t)
	stored := installHelper(t, e)
	writeFile(t, filepath.Join(e.home, ".docker", "config.json"), `{"credHelpers":{"`+reg.Host+`":"kuratest"}}`, 0o600)
	e.fails(errdefs.ExitPermission, []string{"(credentials: none)"}, "pull", plainHTTP, ref)
	writeFile(t, stored, `{"ServerURL":"`+reg.Host+`","Username":"kura","Secret":"wrong"}`, 0o600)
	e.fails(errdefs.ExitPermission, []string{"(credentials from credential helper kuratest)"}, "pull", plainHTTP, ref)
	writeFile(t, stored, `{"ServerURL":"`+reg.Host+`","Username":"kura","Secret":"`+registrytest.Password+`"}`, 0o600)
	e.ok("pull", plainHTTP, ref)
	asked, err := os.ReadFile(filepath.Join(filepath.Dir(stored), "asked"))
	if err != nil || !strings.Contains(string(asked), reg.Host) {
		t.Fatalf("the helper was not asked for %s: %q, %v", reg.Host, asked, err)
	}

	e2 := newCredEnv(t)
	stored2 := installHelper(t, e2)
	writeFile(t, stored2, `{"ServerURL":"`+reg.Host+`","Username":"kura","Secret":"`+registrytest.Password+`"}`, 0o600)
	writeFile(t, filepath.Join(e2.config, "containers", "auth.json"), `{"auths":{},"credsStore":"kuratest"}`, 0o600)
	e2.ok("pull", plainHTTP, ref)
}

// TestLoginLogout: login checks the password with the registry, then writes podman's auth.json
// (0600); a pull needs no --creds; logout removes it and the next pull fails naming "none".
// With credHelpers configured for the registry, login stores in the helper instead.
func TestLoginLogout(t *testing.T) {
	reg, ref := credRegistry(t)
	e := newCredEnv(t)
	e.fails(errdefs.ExitPermission, []string{"authentication failed for " + reg.Host}, "login", plainHTTP, "-u", "kura", "-p", "wrong", reg.Host)
	if _, err := os.Stat(e.primary()); err == nil {
		t.Fatal("a refused login wrote the auth file")
	}
	out, code := e.run(registrytest.Password+"\n", "login", plainHTTP, "-u", "kura", "--password-stdin", reg.Host)
	if code != 0 || !strings.Contains(out, "Login Succeeded") {
		t.Fatalf("login: exit %d\n%s", code, out)
	}
	fi, err := os.Stat(e.primary())
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("auth file: %v, %v; want mode 0600", fi, err)
	}
	data, _ := os.ReadFile(e.primary())
	if want := base64.StdEncoding.EncodeToString([]byte("kura:" + registrytest.Password)); !strings.Contains(string(data), want) {
		t.Fatalf("auth file lacks the credential:\n%s", data)
	}
	if got := e.ok("login", "--get-login", reg.Host); strings.TrimSpace(got) != "kura" {
		t.Fatalf("--get-login = %q", got)
	}
	e.ok("pull", plainHTTP, ref)
	e.ok("logout", reg.Host)
	e.fails(errdefs.ExitNotFound, []string{"not logged into " + reg.Host}, "logout", reg.Host)
	e.fails(errdefs.ExitPermission, []string{"(credentials: none)"}, "pull", plainHTTP, ref)

	// --authfile: written there; logout --all empties it.
	other := filepath.Join(e.home, "other.json")
	e.ok("login", plainHTTP, "--authfile", other, "-u", "kura", "-p", registrytest.Password, reg.Host)
	e.ok("pull", plainHTTP, "--authfile", other, ref)
	e.ok("logout", "--authfile", other, "--all")
	e.fails(errdefs.ExitPermission, []string{"(credentials: none)"}, "pull", plainHTTP, "--authfile", other, ref)

	// credHelpers in the primary file: login stores in the helper, not in the file.
	stored := installHelper(t, e)
	writeFile(t, e.primary(), `{"auths":{},"credHelpers":{"`+reg.Host+`":"kuratest"}}`, 0o600)
	e.ok("login", plainHTTP, "-u", "kura", "-p", registrytest.Password, reg.Host)
	if data, err := os.ReadFile(stored); err != nil || !strings.Contains(string(data), registrytest.Password) {
		t.Fatalf("helper store: %q, %v", data, err)
	}
	if data, _ := os.ReadFile(e.primary()); strings.Contains(string(data), `"auth"`) {
		t.Fatalf("login wrote the file although a helper is configured:\n%s", data)
	}
	e.ok("pull", plainHTTP, ref)
	e.ok("logout", reg.Host)
	if _, err := os.Stat(stored); err == nil {
		t.Fatal("logout left the helper's credential")
	}
}

// TestCredsUserPrompts: --creds USER asks for the password on the terminal (a pseudo-terminal
// made by script(1)) and pulls with it.
func TestCredsUserPrompts(t *testing.T) {
	if _, err := exec.LookPath("script"); err != nil {
		t.Fatalf("script(1) from util-linux is needed for a terminal: %v", err)
	}
	_, ref := credRegistry(t)
	e := newCredEnv(t)
	line := strings.Join([]string{lifecycleKura(t), "--root", e.root, "pull", plainHTTP, "--creds", registrytest.Username, ref}, " ")
	out, code := e.runPlain(registrytest.Password+"\n", "script", "-qec", line, "/dev/null")
	if code != 0 || !strings.Contains(out, "Password for "+registrytest.Username) {
		t.Fatalf("exit %d, want 0 after a password prompt:\n%s", code, out)
	}
}

// TestLoginArguments: REGISTRY is HOST[:PORT][/NAMESPACE] (docker-style URLs normalised), never
// an image reference with a tag or digest; conflicting password flags are usage errors.
func TestLoginArguments(t *testing.T) {
	for arg, want := range map[string]string{
		"reg.example:5000":            "reg.example:5000",
		"reg.example:5000/team":       "reg.example:5000/team",
		"https://index.docker.io/v1/": "docker.io",
		"registry-1.docker.io":        "docker.io",
		"reg.example/team/app:v1":     "",
		"reg.example/app@sha256:abcd": "",
		"":                            "",
	} {
		got, err := loginKey([]string{arg})
		if want == "" && err == nil || want != "" && (err != nil || got != want) {
			t.Errorf("loginKey(%q) = %q, %v; want %q", arg, got, err, want)
		}
	}
	e := newCredEnv(t)
	e.fails(errdefs.ExitUsage, []string{"mutually exclusive"}, "login", "-u", "kura", "-p", "x", "--password-stdin", "reg.example")
	e.fails(errdefs.ExitUsage, []string{"no password given", "no terminal"}, "login", "-u", "kura", "reg.example")
	e.fails(errdefs.ExitUsage, []string{"REGISTRY or --all"}, "logout", "--all", "reg.example")
	e.fails(errdefs.ExitNotFound, []string{"not logged into reg.example"}, "login", "--get-login", "reg.example")
}
