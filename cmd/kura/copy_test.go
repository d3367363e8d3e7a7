package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/testkit/tartest"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// TestCopySideOptions (issue 18): skopeo copy's per-side options. The source registry speaks
// TLS with a private CA (--src-cert-dir), the destination plain HTTP (--dest-tls-verify=false);
// --creds is wrong and each side's --*-creds replaces it for that side only.
func TestCopySideOptions(t *testing.T) {
	ca := registrytest.NewCA(t)
	src := registrytest.New(t, registrytest.WithServerTLS(ca.ServerTLS(t, false)))
	dst := registrytest.New(t)
	pushTarImage(t, src, "side/app", "v1", "from a TLS registry")
	certDir := t.TempDir()
	ca.WriteCA(t, certDir, "company-ca")
	e := newRegEnv(t, "")
	good := registrytest.Username + ":" + registrytest.Password
	args := []string{"copy", "docker://" + src.Host + "/side/app:v1", "docker://" + dst.Host + "/side/copy:v1",
		"--creds", "kura:wrong", "--src-cert-dir", certDir, "--dest-tls-verify=false", "--src-creds", good}

	if out, code := e.run(args...); code != 77 {
		t.Fatalf("the destination used --src-creds? exit %d, want 77 (its credentials are --creds, wrong):\n%s", code, out)
	}
	e.fails("refusing plain HTTP", "copy", "docker://"+src.Host+"/side/app:v1", "docker://"+dst.Host+"/side/copy:v1",
		"--creds", good, "--src-cert-dir", certDir)
	e.fails("certificate", "copy", "docker://"+src.Host+"/side/app:v1", "docker://"+dst.Host+"/side/copy:v1",
		"--creds", good, "--dest-cert-dir", certDir, "--dest-tls-verify=false")
	e.ok(append(args, "--dest-creds", good)...)
	e.ok("pull", "docker://"+dst.Host+"/side/copy:v1", "--creds", good, "--tls-verify=false", "--platform", "linux/amd64")
}

// TestCopyDigestFileQuietPreserve (issue 18): --digestfile holds the destination manifest's
// digest, -q prints nothing, --preserve-digests keeps the source manifest and refuses (exit 6) a
// format that would change a layer.
func TestCopyDigestFileQuietPreserve(t *testing.T) {
	reg := registrytest.New(t)
	img := pushTarImage(t, reg, "keep/app", "v1", "kept as it is")
	e := newRegEnv(t, "")
	creds := append([]string{"--tls-verify=false"}, regCreds...)
	srcRef := "docker://" + reg.Host + "/keep/app:v1"
	digestFile := filepath.Join(t.TempDir(), "digest")

	out := e.ok(append([]string{"copy", "-q", "--preserve-digests", "--digestfile", digestFile, srcRef, "docker://" + reg.Host + "/keep/same:v1"}, creds...)...)
	if out != "" {
		t.Errorf("copy -q printed %q", out)
	}
	if got, _ := os.ReadFile(digestFile); string(got) != img.Manifest.Digest.String() {
		t.Errorf("--digestfile %q, want the source manifest %s (preserved)", got, img.Manifest.Digest)
	}
	if insp := e.ok(append([]string{"inspect", "--format", "{{.Digest}}", "docker://" + reg.Host + "/keep/same:v1"}, creds...)...); strings.TrimSpace(insp) != img.Manifest.Digest.String() {
		t.Errorf("destination manifest %s, want %s", insp, img.Manifest.Digest)
	}

	if out, code := e.run(append([]string{"copy", "--preserve-digests", "--format", "zstd:chunked", srcRef, "docker://" + reg.Host + "/keep/no:v1"}, creds...)...); code != 6 || !strings.Contains(out, "would be recompressed") {
		t.Errorf("--preserve-digests --format zstd:chunked of a tar layer: exit %d, want 6:\n%s", code, out)
	}

	e.ok(append([]string{"copy", "-q", "--digestfile", digestFile, srcRef, "docker://" + reg.Host + "/keep/zc:v1"}, creds...)...)
	got, _ := os.ReadFile(digestFile)
	insp := e.ok(append([]string{"inspect", "--format", "{{.Digest}}", "docker://" + reg.Host + "/keep/zc:v1"}, creds...)...)
	if string(got) == img.Manifest.Digest.String() || strings.TrimSpace(insp) != string(got) {
		t.Errorf("recompressed copy: --digestfile %q, destination %s, source %s", got, insp, img.Manifest.Digest)
	}
}

// TestCopyRetryTimes (issue 18): a source that answers 500 for longer than the client's own
// retries fails the copy, unless --retry-times starts it over.
func TestCopyRetryTimes(t *testing.T) {
	reg := registrytest.New(t)
	pushTarImage(t, reg, "retry/app", "v1", "eventually")
	e := newRegEnv(t, "")
	args := append([]string{"copy", "--retry-delay", "1ms", "docker://" + reg.Host + "/retry/app:v1", "docker://" + reg.Host + "/retry/copy:v1", "--tls-verify=false"}, regCreds...)
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.ServerError, Times: 5})
	e.fails("500", args...)
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.ServerError, Times: 5})
	out := e.ok(append(args, "--retry-times", "2")...)
	if !strings.Contains(out, "retrying (1 of 2)") {
		t.Errorf("no retry reported:\n%s", out)
	}
}

// TestCopyAllCLI (issue 18): copy --all writes an index of every platform's converted image
// (each pulls by platform); with --preserve-digests the index keeps its digest.
func TestCopyAllCLI(t *testing.T) {
	reg := registrytest.New(t)
	amd := pushTarImage(t, reg, "all/app", "", "amd64 file")
	arm := reg.PushImage(t, "all/app", "", ocispec.Platform{OS: "linux", Architecture: "arm64"}, ocispec.MediaTypeImageLayer,
		tartest.Tar(t, tartest.File("hello", "arm64 file")))
	idx := ocispec.Index{MediaType: ocispec.MediaTypeImageIndex, Manifests: []ocispec.Descriptor{amd.Manifest, arm.Manifest}}
	idx.SchemaVersion = 2
	body, _ := json.Marshal(idx)
	idxDesc := reg.PushManifest(t, "all/app", "v1", ocispec.MediaTypeImageIndex, body)

	e := newRegEnv(t, "")
	creds := append([]string{"--tls-verify=false"}, regCreds...)
	digestFile := filepath.Join(t.TempDir(), "digest")
	src := "docker://" + reg.Host + "/all/app:v1"
	e.ok(append([]string{"copy", "--all", "--preserve-digests", "--digestfile", digestFile, src, "docker://" + reg.Host + "/all/same:v1"}, creds...)...)
	if got, _ := os.ReadFile(digestFile); string(got) != idxDesc.Digest.String() {
		t.Errorf("preserved index %s, source %s", got, idxDesc.Digest)
	}
	out := e.ok(append([]string{"copy", "--all", "--digestfile", digestFile, src, "docker://" + reg.Host + "/all/zc:v1"}, creds...)...)
	got, _ := os.ReadFile(digestFile)
	if string(got) == idxDesc.Digest.String() || !strings.Contains(out, "index of 2 images") {
		t.Errorf("converted index %s (source %s):\n%s", got, idxDesc.Digest, out)
	}
	for _, p := range []string{"linux/amd64", "linux/arm64"} {
		e.ok(append([]string{"pull", "docker://" + reg.Host + "/all/zc:v1", "--platform", p}, creds...)...)
	}
}

// TestCopyTemporary: what --retry-times retries, and what it does not.
func TestCopyTemporary(t *testing.T) {
	for _, c := range []struct {
		err  error
		want bool
	}{
		{&registry.HTTPError{StatusCode: 503}, true},
		{fmt.Errorf("layer 1: %w", &registry.HTTPError{StatusCode: 429}), true},
		{&registry.HTTPError{StatusCode: 404}, false},
		{&url.Error{Op: "Get", URL: "https://r/v2/", Err: &net.OpError{Op: "dial", Err: os.NewSyscallError("connect", syscall.ECONNREFUSED)}}, true},
		{&url.Error{Op: "Get", URL: "https://r/v2/", Err: x509.UnknownAuthorityError{}}, false},
		{&net.DNSError{Err: "no such host", Name: "r", IsNotFound: true}, false},
		{fmt.Errorf("fetching: %w", io.ErrUnexpectedEOF), true},
		{fmt.Errorf("blob: %w", errdefs.ErrDigestMismatch), false},
		{context.Canceled, false},
	} {
		if got := temporary(c.err); got != c.want {
			t.Errorf("temporary(%v) = %v, want %v", c.err, got, c.want)
		}
	}
}
