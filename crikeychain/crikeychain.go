// Package crikeychain gives the containerd snapshotter the registry credentials the kubelet
// passes in the CRI's PullImage (a pod's image pull secrets), which containerd never passes to a
// snapshotter. As stargz-snapshotter's CRI keychain does, it is a proxy of the CRI image
// service: the kubelet talks to it (--image-service-endpoint), it keeps each PullImage's
// AuthConfig in memory under the image reference, and forwards every call to containerd's.
// The snapshotter's pulls of that reference then use the credential for the reference's
// registry. Nothing is written to disk: a restarted server knows no credential until the
// kubelet pulls again.
package crikeychain

import (
	"context"
	"encoding/base64"
	"fmt"
	"net/url"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/auth"
	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// Proxy is the CRI image service proxy and the credentials it captured. It is safe for
// concurrent use.
type Proxy struct {
	runtimeapi.UnimplementedImageServiceServer
	upstream runtimeapi.ImageServiceClient

	mu    sync.Mutex
	creds map[string]secret // by normalised image reference
}

// secret is one PullImage's credential, and the registry it is for ("": every host a pull of
// the reference tries, mirrors included, as containerd applies it).
type secret struct {
	cred   auth.Credential
	server string
}

// New returns a Proxy forwarding to upstream (containerd's CRI image service).
func New(upstream runtimeapi.ImageServiceClient) *Proxy {
	return &Proxy{upstream: upstream, creds: map[string]secret{}}
}

// key is the form a reference is kept and looked up in: the kubelet's "nginx" and the CRI
// label's "docker.io/library/nginx:latest" are one key.
func key(ref string) (string, imageref.Reference, error) {
	r, err := imageref.Parse(ref)
	if err != nil {
		return "", r, err
	}
	if r.Transport != imageref.Docker {
		return "", r, fmt.Errorf("%s is not a registry reference: %w", ref, errdefs.ErrInvalid)
	}
	return r.String(), r, nil
}

// PullImage keeps the request's credential for its image (before containerd pulls: the
// snapshotter's pulls happen during the call), then forwards the call.
func (p *Proxy) PullImage(ctx context.Context, req *runtimeapi.PullImageRequest) (*runtimeapi.PullImageResponse, error) {
	p.remember(req.GetImage().GetImage(), req.GetAuth())
	return p.upstream.PullImage(ctx, req)
}

// remember keeps a's credential for ref; a pull without one (or with one Kura cannot use)
// drops what an earlier pull of ref gave.
func (p *Proxy) remember(ref string, a *runtimeapi.AuthConfig) {
	k, _, err := key(ref)
	if err != nil {
		return
	}
	c, ok := credential(a)
	p.mu.Lock()
	defer p.mu.Unlock()
	if !ok {
		delete(p.creds, k)
		return
	}
	p.creds[k] = secret{cred: c, server: serverHost(a.GetServerAddress())}
}

// RemoveImage forgets the image's credential and forwards the call.
func (p *Proxy) RemoveImage(ctx context.Context, req *runtimeapi.RemoveImageRequest) (*runtimeapi.RemoveImageResponse, error) {
	if k, _, err := key(req.GetImage().GetImage()); err == nil {
		p.mu.Lock()
		delete(p.creds, k)
		p.mu.Unlock()
	}
	return p.upstream.RemoveImage(ctx, req)
}

// ListImages forwards the call.
func (p *Proxy) ListImages(ctx context.Context, req *runtimeapi.ListImagesRequest) (*runtimeapi.ListImagesResponse, error) {
	return p.upstream.ListImages(ctx, req)
}

// ImageStatus forwards the call.
func (p *Proxy) ImageStatus(ctx context.Context, req *runtimeapi.ImageStatusRequest) (*runtimeapi.ImageStatusResponse, error) {
	return p.upstream.ImageStatus(ctx, req)
}

// ImageFsInfo forwards the call.
func (p *Proxy) ImageFsInfo(ctx context.Context, req *runtimeapi.ImageFsInfoRequest) (*runtimeapi.ImageFsInfoResponse, error) {
	return p.upstream.ImageFsInfo(ctx, req)
}

// Credential is the credential the kubelet gave for ref, for registry host: with the
// AuthConfig's server_address, for that registry only; without, for every host a pull of ref
// tries (containerd's rule, which stargz-snapshotter follows too).
func (p *Proxy) Credential(ref, host string) (auth.Credential, bool) {
	k, _, err := key(ref)
	if err != nil {
		return auth.Credential{}, false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	sc, ok := p.creds[k]
	if !ok || sc.server != "" && sc.server != serverHost(host) {
		return auth.Credential{}, false
	}
	return sc.cred, true
}

// credential turns a CRI AuthConfig into a credential: user and password, or the base64
// "user:password" auth field, or an identity token. The registry token (a bearer token for the
// registry itself) is not supported.
func credential(a *runtimeapi.AuthConfig) (auth.Credential, bool) {
	if a == nil {
		return auth.Credential{}, false
	}
	c := auth.Credential{Username: a.GetUsername(), Password: a.GetPassword(), IdentityToken: a.GetIdentityToken()}
	if a.GetAuth() != "" {
		b, err := base64.StdEncoding.DecodeString(a.GetAuth())
		user, pass, ok := strings.Cut(string(b), ":")
		if err != nil || !ok {
			return auth.Credential{}, false
		}
		c.Username, c.Password = user, pass
	}
	return c, !c.IsZero()
}

// serverHost is the host of a server address, given as a host or a URL
// ("https://index.docker.io/v1/" is Docker Hub, "docker.io").
func serverHost(s string) string {
	if s == "" {
		return ""
	}
	if u, err := url.Parse(s); err == nil && u.Host != "" {
		s = u.Host
	}
	switch s {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return s
}

// Keychain is next with the credential the kubelet gave for ref in front (see Credential; a
// pull's client is made per reference).
func (p *Proxy) Keychain(ref string, next authn.Keychain) authn.Keychain {
	return refKeychain{p: p, ref: ref, next: next}
}

type refKeychain struct {
	p    *Proxy
	ref  string
	next authn.Keychain
}

func (k refKeychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	if c, ok := k.p.Credential(k.ref, res.RegistryStr()); ok {
		return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken}), nil
	}
	return k.next.Resolve(res)
}
