package main

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/registry/registrytest"
)

// regEnv is an environment for kura that sees only the test's registry configuration: HOME (for
// $HOME/.config/containers/certs.d and registries.conf) and CONTAINERS_REGISTRIES_CONF.
type regEnv struct {
	t    *testing.T
	root string
	home string
	conf string // registries.conf path
}

func newRegEnv(t *testing.T, registriesConf string) *regEnv {
	t.Helper()
	e := &regEnv{t: t, root: t.TempDir(), home: t.TempDir()}
	e.conf = filepath.Join(t.TempDir(), "registries.conf")
	if err := os.WriteFile(e.conf, []byte(registriesConf), 0o644); err != nil {
		t.Fatal(err)
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
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	tw.WriteHeader(&tar.Header{Name: "hello", Mode: 0o644, Size: int64(len(content)), Typeflag: tar.TypeReg})
	tw.Write([]byte(content))
	tw.Close()
	return reg.PushImage(t, repo, tag, ocispec.Platform{OS: "linux", Architecture: "amd64"}, ocispec.MediaTypeImageLayer, buf.Bytes())
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

	ca.WriteCA(t, filepath.Join(e.home, ".config/containers/certs.d", reg.Host), "ca")
	e.root = t.TempDir()
	e.ok(args...)
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
