package crikeychain

import (
	"encoding/base64"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/auth"
)

// TestCredentials: a PullImage's AuthConfig is kept under the normalised reference (the
// kubelet's short name finds the CRI label's full one); server_address restricts it to one
// registry; the base64 auth field and user/password both work; a later pull without a secret,
// or RemoveImage's forgetting, drops it; another reference never gets it.
func TestCredentials(t *testing.T) {
	p := New(nil)
	p.remember("nginx", &runtimeapi.AuthConfig{Username: "u", Password: "p"})
	if c, ok := p.Credential("docker.io/library/nginx:latest", "mirror.example:5000"); !ok || c != (auth.Credential{Username: "u", Password: "p"}) {
		t.Fatalf("nginx's secret for its full name on a mirror: %v %v", c, ok)
	}
	if _, ok := p.Credential("docker.io/library/redis:latest", "docker.io"); ok {
		t.Fatalf("another reference got nginx's secret")
	}
	b64 := base64.StdEncoding.EncodeToString([]byte("user:pa:ss"))
	p.remember("reg.example/app:v1", &runtimeapi.AuthConfig{Auth: b64, ServerAddress: "https://reg.example/"})
	if c, ok := p.Credential("reg.example/app:v1", "reg.example"); !ok || c.Username != "user" || c.Password != "pa:ss" {
		t.Fatalf("auth field: %v %v", c, ok)
	}
	if _, ok := p.Credential("reg.example/app:v1", "mirror.example"); ok {
		t.Fatalf("a secret with a server address applied to another host")
	}
	kc := p.Keychain("reg.example/app:v1", authn.DefaultKeychain)
	reg, _ := name.NewRegistry("reg.example")
	a, err := kc.Resolve(reg)
	if err != nil {
		t.Fatal(err)
	}
	if cfg, err := a.Authorization(); err != nil || cfg.Username != "user" {
		t.Fatalf("keychain for the reference's registry: %v %v", cfg, err)
	}
	p.remember("reg.example/app:v1", nil)
	if _, ok := p.Credential("reg.example/app:v1", "reg.example"); ok {
		t.Fatalf("a pull without a secret kept the earlier one")
	}
	p.remember("reg.example/app:v1", &runtimeapi.AuthConfig{Auth: "not base64!"})
	if _, ok := p.Credential("reg.example/app:v1", "reg.example"); ok {
		t.Fatalf("a malformed auth field gave a credential")
	}
}
