package registry_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// certsDClient is a client that finds each host's certificates under certsD/HOST:PORT, as
// podman does under /etc/containers/certs.d, verifying TLS.
func certsDClient(certsD string) *registry.Client {
	return registry.New(
		registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username+":"+registrytest.Password))),
		registry.WithRetry(1, time.Millisecond),
		registry.WithHostTLS(func(host string) (registry.HostTLS, error) {
			dir, err := registry.FindCertDir([]string{filepath.Join(certsD, "missing"), certsD}, host)
			return registry.HostTLS{CertDir: dir}, err
		}))
}

func fetch(t *testing.T, c *registry.Client, reg *registrytest.Registry, blob []byte) error {
	desc := reg.PushBlob(t, repoPath, blob)
	rc, err := c.FetchBlob(context.Background(), imageref.Repository{Domain: reg.Host, Path: repoPath}, desc)
	if err != nil {
		return err
	}
	defer rc.Close()
	got, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	if !bytes.Equal(got, blob) {
		return errors.New("blob differs")
	}
	return nil
}

// A registry whose certificate is signed by a private CA is reached once certs.d/HOST:PORT/ca.crt
// holds the CA, and not before.
func TestCertsDPrivateCA(t *testing.T) {
	ca := registrytest.NewCA(t)
	reg := registrytest.New(t, registrytest.WithServerTLS(ca.ServerTLS(t, false)))
	certsD := t.TempDir()
	blob := []byte("over https, signed by a private CA")
	if err := fetch(t, certsDClient(certsD), reg, blob); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("without the CA: err = %v, want a certificate error", err)
	}
	ca.WriteCA(t, filepath.Join(certsD, reg.Host), "ca")
	if err := fetch(t, certsDClient(certsD), reg, blob); err != nil {
		t.Fatalf("with certs.d/%s/ca.crt: %v", reg.Host, err)
	}
}

// A registry that requires a client certificate gets the *.cert/*.key pair of certs.d/HOST:PORT.
func TestCertsDClientCertificate(t *testing.T) {
	ca := registrytest.NewCA(t)
	reg := registrytest.New(t, registrytest.WithServerTLS(ca.ServerTLS(t, true)))
	certsD := t.TempDir()
	dir := filepath.Join(certsD, reg.Host)
	ca.WriteCA(t, dir, "ca")
	blob := []byte("only for clients with a certificate")
	if err := fetch(t, certsDClient(certsD), reg, blob); err == nil {
		t.Fatal("no client certificate: the registry let us in")
	}
	ca.WriteClientCert(t, dir, "client")
	if err := fetch(t, certsDClient(certsD), reg, blob); err != nil {
		t.Fatalf("with client.cert and client.key: %v", err)
	}
	// A key without its certificate is a broken directory, said so (containers/image refuses too).
	if err := os.Rename(filepath.Join(dir, "client.cert"), filepath.Join(dir, "client.pem")); err != nil {
		t.Fatal(err)
	}
	err := fetch(t, certsDClient(certsD), reg, blob)
	if !errors.Is(err, errdefs.ErrInvalid) || !strings.Contains(err.Error(), "missing client certificate client.cert") {
		t.Fatalf("key without certificate: err = %v, want ErrInvalid naming client.cert", err)
	}
}

// WithTLSVerify(true) never falls back to plain HTTP, not even for a loopback registry, which
// go-containerregistry would otherwise ping over HTTP too; WithTLSVerify(false) does.
func TestTLSVerifyNeverFallsBackToHTTP(t *testing.T) {
	reg := registrytest.New(t)
	blob := []byte("plain http")
	creds := registry.WithKeychain(auth.NewKeychain(auth.WithCreds(registrytest.Username + ":" + registrytest.Password)))
	strict := registry.New(creds, registry.WithTLSVerify(true), registry.WithRetry(1, time.Millisecond))
	err := fetch(t, strict, reg, blob)
	if err == nil || !strings.Contains(err.Error(), "refusing plain HTTP") {
		t.Fatalf("--tls-verify=true against plain HTTP on loopback: err = %v, want a refusal", err)
	}
	lax := registry.New(creds, registry.WithTLSVerify(false))
	if err := fetch(t, lax, reg, blob); err != nil {
		t.Fatalf("--tls-verify=false: %v", err)
	}
	insecureHost := registry.New(creds, registry.WithHostTLS(func(host string) (registry.HostTLS, error) {
		return registry.HostTLS{Insecure: host == reg.Host}, nil
	}))
	if err := fetch(t, insecureHost, reg, blob); err != nil {
		t.Fatalf("host marked insecure: %v", err)
	}
}

// The first directory holding HOST wins (containers/image: the user's, then
// /etc/containers/certs.d, then /etc/docker/certs.d); none is "".
func TestFindCertDir(t *testing.T) {
	user, system := t.TempDir(), t.TempDir()
	dirs := []string{filepath.Join(user, "absent"), user, system}
	if d, err := registry.FindCertDir(dirs, "reg.example:5000"); d != "" || err != nil {
		t.Fatalf("no directory: %q, %v", d, err)
	}
	for _, base := range []string{system, user} {
		if err := os.MkdirAll(filepath.Join(base, "reg.example:5000"), 0o755); err != nil {
			t.Fatal(err)
		}
		if d, err := registry.FindCertDir(dirs, "reg.example:5000"); d != filepath.Join(base, "reg.example:5000") || err != nil {
			t.Fatalf("with %s: %q, %v", base, d, err)
		}
	}
	for _, host := range []string{"..", "a/b", ""} {
		if _, err := registry.FindCertDir(dirs, host); !errors.Is(err, errdefs.ErrInvalid) {
			t.Errorf("host %q: err = %v, want ErrInvalid", host, err)
		}
	}
}
