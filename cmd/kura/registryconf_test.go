package main

import (
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry/registrytest"
)

// regEnv is an environment for kura with the test's registry configuration: its own HOME (for
// $HOME/.config/containers/certs.d) and CONTAINERS_REGISTRIES_CONF (an empty file), with the
// test's settings in the user's drop-in directory, which is read last, so that the host's
// /etc/containers/registries.conf.d cannot override them.
type regEnv struct {
	t    *testing.T
	root string
	home string
	conf string // the main registries.conf, empty
}

func newRegEnv(t *testing.T, registriesConf string) *regEnv {
	t.Helper()
	e := &regEnv{t: t, root: t.TempDir(), home: t.TempDir()}
	e.conf = filepath.Join(t.TempDir(), "registries.conf")
	dropIn := filepath.Join(e.home, ".config/containers/registries.conf.d/50-test.conf")
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	for path, content := range map[string]string{e.conf: "", dropIn: registriesConf} {
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// run runs kura with the test's store and environment; it returns the combined output and the
// exit code.
func (e *regEnv) run(args ...string) (string, int) {
	e.t.Helper()
	cmd := exec.Command(lifecycleKura(e.t), append([]string{"--root", e.root}, args...)...)
	cmd.Env = append(os.Environ(), "HOME="+e.home, "CONTAINERS_REGISTRIES_CONF="+e.conf, "XDG_RUNTIME_DIR="+e.home)
	out, err := cmd.CombinedOutput()
	if _, ok := err.(*exec.ExitError); err != nil && !ok {
		e.t.Fatalf("kura %s: %v", strings.Join(args, " "), err)
	}
	return string(out), cmd.ProcessState.ExitCode()
}

func (e *regEnv) ok(args ...string) string {
	e.t.Helper()
	out, code := e.run(args...)
	if code != 0 {
		e.t.Fatalf("kura %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// fails runs kura and fails the test unless it exits non-zero and prints want.
func (e *regEnv) fails(want string, args ...string) {
	e.t.Helper()
	out, code := e.run(args...)
	if code == 0 || !strings.Contains(out, want) {
		e.t.Fatalf("kura %s: exit %d, want a failure printing %q:\n%s", strings.Join(args, " "), code, want, out)
	}
}

var regCreds = []string{"--creds", registrytest.Username + ":" + registrytest.Password}

// pushTarImage stores a one-file image with an uncompressed tar layer (whose digest is its
// DiffID) as repo:tag.
func pushTarImage(t *testing.T, reg *registrytest.Registry, repo, tag, content string) registrytest.Image {
	t.Helper()
	layer := tartest.Tar(t, tartest.File("hello", content))
	return reg.PushImage(t, repo, tag, ocispec.Platform{OS: "linux", Architecture: "amd64"}, ocispec.MediaTypeImageLayer, layer)
}

var amd64 = []string{"--platform", "linux/amd64"}

// A registry with a certificate from a private CA: refused until the CA is in
// $HOME/.config/containers/certs.d/HOST:PORT/ca.crt, or in the --cert-dir directory.
func TestPullCertsDPrivateCA(t *testing.T) {
	ca := registrytest.NewCA(t)
	reg := registrytest.New(t, registrytest.WithServerTLS(ca.ServerTLS(t, false)))
	pushTarImage(t, reg, "tls/app", "v1", "over TLS")
	e := newRegEnv(t, "")
	ref := "docker://" + reg.Host + "/tls/app:v1"
	args := append(append([]string{"pull", ref}, regCreds...), amd64...)
	e.fails("certificate", args...)

	certDir := t.TempDir()
	ca.WriteCA(t, certDir, "company-ca")
	e.ok(append(args, "--cert-dir", certDir)...)

	// A push over the same TLS, with --cert-dir.
	e.ok(append([]string{"push", reg.Host + "/tls/app:v1", "docker://" + reg.Host + "/tls/pushed:v1", "--cert-dir", certDir}, regCreds...)...)

	ca.WriteCA(t, filepath.Join(e.home, ".config/containers/certs.d", reg.Host), "ca")
	e.root = t.TempDir()
	e.ok(args...)
	e.ok(append(append([]string{"pull", "docker://" + reg.Host + "/tls/pushed:v1"}, regCreds...), amd64...)...)
}

// A registry that requires a client certificate: the certs.d directory's client.cert and
// client.key are presented, and without them the registry refuses us.
func TestPullCertsDClientCertificate(t *testing.T) {
	ca := registrytest.NewCA(t)
	reg := registrytest.New(t, registrytest.WithServerTLS(ca.ServerTLS(t, true)))
	pushTarImage(t, reg, "mtls/app", "v1", "client certificates only")
	e := newRegEnv(t, "")
	dir := filepath.Join(e.home, ".config/containers/certs.d", reg.Host)
	ca.WriteCA(t, dir, "ca")
	args := append(append([]string{"pull", "docker://" + reg.Host + "/mtls/app:v1"}, regCreds...), amd64...)
	e.fails("certificate", args...)
	ca.WriteClientCert(t, dir, "client")
	e.ok(args...)
}

// --tls-verify=true, and the default, never fall back to plain HTTP, even on loopback (podman
// refuses too); --tls-verify=false does.
func TestPullTLSVerifyNoPlainHTTPFallback(t *testing.T) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "plain/app", "v1", "plain HTTP")
	e := newRegEnv(t, "")
	args := append(append([]string{"pull", "docker://" + reg.Host + "/plain/app:v1"}, regCreds...), amd64...)
	e.fails("refusing plain HTTP", append(args, "--tls-verify=true")...)
	e.fails("refusing plain HTTP", args...)
	e.ok(append(args, "--tls-verify=false")...)
}

// deadHost is a loopback address that refuses connections: a registry that is down.
func deadHost(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := l.Addr().String()
	l.Close()
	return host
}

// Short names resolve through unqualified-search-registries (in order under "permissive", an
// error when ambiguous under "enforcing") and [aliases]; the image is stored under the
// resolved name.
func TestPullShortNames(t *testing.T) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "sko/base", "gzip", "searched")
	pushTarImage(t, reg, "team/app", "v2", "aliased")
	dead := deadHost(t)
	conf := fmt.Sprintf(`
unqualified-search-registries = [%q, %q]
short-name-mode = "permissive"

[aliases]
"myapp" = "%s/team/app"

[[registry]]
location = %q
insecure = true
`, dead, reg.Host, reg.Host, reg.Host)
	e := newRegEnv(t, conf)
	pullArgs := func(ref string) []string {
		return append(append([]string{"--json", "pull", ref}, regCreds...), amd64...)
	}
	if out := e.ok(pullArgs("sko/base:gzip")...); !strings.Contains(out, reg.Host+"/sko/base:gzip") {
		t.Fatalf("short name through the second search registry: stored as?\n%s", out)
	}
	if out := e.ok(pullArgs("myapp:v2")...); !strings.Contains(out, reg.Host+"/team/app:v2") {
		t.Fatalf("alias: stored as?\n%s", out)
	}

	enforcing := newRegEnv(t, strings.Replace(conf, `"permissive"`, `"enforcing"`, 1))
	enforcing.fails("ambiguous", pullArgs("sko/base:gzip")...)
	// An alias is one candidate: no ambiguity.
	enforcing.ok(pullArgs("myapp:v2")...)

	none := newRegEnv(t, fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.Host))
	none.fails("no unqualified-search-registries", pullArgs("sko/base:gzip")...)
}

// A mirror serves while the primary refuses connections; the image is stored under the
// primary's name. pull-from-mirror = "digest-only" keeps a tag pull off the mirror. A
// location rewrite sends a prefix elsewhere.
func TestPullMirrorWhilePrimaryDown(t *testing.T) {
	mirror := registrytest.New(t, registrytest.AllowAnonymousPull())
	img := pushTarImage(t, mirror, "team/app", "v1", "from the mirror")
	primary := deadHost(t)
	conf := fmt.Sprintf(`
[[registry]]
location = %q
insecure = true

[[registry.mirror]]
location = %q
insecure = true
`, primary, mirror.Host)
	e := newRegEnv(t, conf)
	args := func(ref string) []string {
		return append(append([]string{"--json", "pull", ref}, regCreds...), amd64...)
	}
	out := e.ok(args(primary + "/team/app:v1")...)
	if !strings.Contains(out, primary+"/team/app:v1") {
		t.Fatalf("stored under the primary's name?\n%s", out)
	}

	// A mirror that is down: the primary serves.
	upPrimary := newRegEnv(t, fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n[[registry.mirror]]\nlocation = %q\ninsecure = true\n", mirror.Host, deadHost(t)))
	upPrimary.ok(args(mirror.Host + "/team/app:v1")...)

	digestOnly := newRegEnv(t, conf+"pull-from-mirror = \"digest-only\"\n")
	digestOnly.fails(primary, args(primary+"/team/app:v1")...)
	digestOnly.ok(args(primary + "/team/app@" + img.Manifest.Digest.String())...)

	// --creds are for the primary: a mirror on another host that wants credentials gets those
	// of the auth files for its own host, never the primary's.
	locked := registrytest.New(t)
	pushTarImage(t, locked, "team/app", "v1", "from a mirror with credentials")
	withCreds := newRegEnv(t, strings.Replace(conf, mirror.Host, locked.Host, 1))
	withCreds.fails("no source answered", args(primary+"/team/app:v1")...)
	authJSON := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, locked.Host,
		base64.StdEncoding.EncodeToString([]byte(registrytest.Username+":"+registrytest.Password)))
	if err := os.MkdirAll(filepath.Join(withCreds.home, "containers"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(withCreds.home, "containers/auth.json"), []byte(authJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	withCreds.ok(args(primary + "/team/app:v1")...)

	rewrite := newRegEnv(t, fmt.Sprintf(`
[[registry]]
prefix = "registry.example.test/team"
location = "%s/team"
insecure = true
`, mirror.Host))
	if out := rewrite.ok(args("registry.example.test/team/app:v1")...); !strings.Contains(out, "registry.example.test/team/app:v1") {
		t.Fatalf("rewritten location: stored under the reference's name?\n%s", out)
	}
}

// insecure = true lets a plain-HTTP registry be used without --tls-verify=false; an explicit
// --tls-verify=true overrides it.
func TestPullInsecureRegistry(t *testing.T) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "plain/app", "v1", "insecure")
	e := newRegEnv(t, fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", reg.Host))
	args := append(append([]string{"pull", "docker://" + reg.Host + "/plain/app:v1"}, regCreds...), amd64...)
	e.ok(args...)
	e.fails("refusing plain HTTP", append(args, "--tls-verify=true")...)
	// A push to it too (the same rule, from the destination's entry).
	e.ok(append([]string{"push", reg.Host + "/plain/app:v1", "docker://" + reg.Host + "/plain/pushed:v1"}, regCreds...)...)
}

// blocked = true refuses pulls and pushes with a clear error (exit 77), before any request.
func TestBlockedRegistry(t *testing.T) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "blocked/app", "v1", "blocked")
	e := newRegEnv(t, fmt.Sprintf("[[registry]]\nprefix = %q\nlocation = %q\nblocked = true\n", reg.Host+"/blocked", reg.Host))
	args := append(append([]string{"pull", "docker://" + reg.Host + "/blocked/app:v1", "--tls-verify=false"}, regCreds...), amd64...)
	out, code := e.run(args...)
	if code != 77 || !strings.Contains(out, "is blocked in "+e.conf) {
		t.Fatalf("pull from a blocked registry: exit %d, want 77 and a message naming the file:\n%s", code, out)
	}
	e.fails("is blocked", append([]string{"copy", "docker://" + reg.Host + "/other/app:v1", "docker://" + reg.Host + "/blocked/copy:v1", "--tls-verify=false"}, regCreds...)...)
	// Outside the blocked prefix the registry is usable.
	pushTarImage(t, reg, "open/app", "v1", "open")
	e.ok(append(append([]string{"pull", "docker://" + reg.Host + "/open/app:v1", "--tls-verify=false"}, regCreds...), amd64...)...)
}
