// Package registrytest runs a real registry (distribution/v3, in memory, token auth) on loopback
// behind a fault-injecting proxy, for tests only: import it from _test.go files, never from the
// product.
package registrytest

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/auth/token"
	"github.com/distribution/distribution/v3/registry/handlers"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory" // storage driver
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/sirupsen/logrus"
)

const (
	// Username and Password are the credentials the token server accepts.
	Username = "kura"
	Password = "s3cret"
	service  = "kura-test-registry"
	issuer   = "kura-test-token-issuer"
)

// Registry is a running in-process registry. Clients talk to Host (the fault proxy); the token
// realm is a separate loopback server, as with real registries.
type Registry struct {
	// Host is "127.0.0.1:PORT" of the fault proxy, the address tests give clients.
	Host string
	// DirectHost is the registry itself, without the proxy.
	DirectHost string
	// Proxy injects faults into blob GETs and counts what it served.
	Proxy *Proxy

	tokenRequests atomic.Int64
	key           ed25519.PrivateKey
	kid           string
	anonymous     bool
	tls           *tls.Config // nil: plain HTTP
	direct        *httptest.Server
}

// Option configures New.
type Option func(*Registry)

// AllowAnonymousPull lets clients without credentials get pull tokens.
func AllowAnonymousPull() Option { return func(r *Registry) { r.anonymous = true } }

// WithTLS serves the proxy and the token server over HTTPS with httptest's self-signed
// certificate, as a registry a client reaches only with TLS verification off.
func WithTLS() Option { return func(r *Registry) { r.tls = &tls.Config{} } }

// WithServerTLS serves the proxy and the token server over HTTPS with cfg: a certificate from a
// test's private CA (for "127.0.0.1" and "localhost", the token realm's host), and client
// certificate checks if the test wants them. The registry itself stays behind the proxy.
func WithServerTLS(cfg *tls.Config) Option { return func(r *Registry) { r.tls = cfg } }

// startServer starts srv over HTTPS with cfg (httptest's own certificate when cfg has none), or
// plain HTTP when cfg is nil.
func startServer(srv *httptest.Server, cfg *tls.Config) {
	if cfg == nil {
		srv.Start()
		return
	}
	srv.TLS = cfg.Clone()
	srv.StartTLS()
}

var quietLogs sync.Once

// New starts the token server, the registry and the proxy, all on 127.0.0.1, and stops them
// when the test ends.
func New(t testing.TB, opts ...Option) *Registry {
	t.Helper()
	quietLogs.Do(func() { logrus.SetLevel(logrus.ErrorLevel); logrus.SetOutput(io.Discard) })
	r := &Registry{}
	for _, o := range opts {
		o(r)
	}
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r.key = priv
	r.kid = token.GetJWKThumbprint(pub)
	bundle := filepath.Join(t.TempDir(), "token-root.pem")
	writeCert(t, bundle, pub, priv)

	tokenSrv := httptest.NewUnstartedServer(http.HandlerFunc(r.serveToken))
	scheme := "http"
	if r.tls != nil {
		scheme = "https"
	}
	startServer(tokenSrv, r.tls)
	t.Cleanup(tokenSrv.Close)

	cfg := &configuration.Configuration{}
	cfg.Storage = configuration.Storage{
		"inmemory":    configuration.Parameters{},
		"maintenance": configuration.Parameters{"uploadpurging": map[any]any{"enabled": false}},
	}
	cfg.Auth = configuration.Auth{"token": configuration.Parameters{
		// By name, not 127.0.0.1: go-containerregistry refuses realms on private IP literals
		// other than the registry's own host:port. A separate host, as with Docker Hub.
		"realm": scheme + "://localhost:" + portOf(tokenSrv.Listener.Addr().String()) + "/token", "service": service, "issuer": issuer, "rootcertbundle": bundle,
	}}
	cfg.HTTP.RelativeURLs = true
	ctx, cancel := context.WithCancel(context.Background())
	app := handlers.NewApp(ctx, cfg)
	r.direct = httptest.NewServer(app)
	t.Cleanup(func() { r.direct.Close(); cancel() })
	r.DirectHost = r.direct.Listener.Addr().String()

	r.Proxy = newProxy(t, r.direct.URL, r.tls)
	r.Host = r.Proxy.host
	return r
}

func portOf(hostport string) string {
	_, port, _ := net.SplitHostPort(hostport)
	return port
}

// TokenRequests counts token-server answers (a sign of the auth handshake being reused or not).
func (r *Registry) TokenRequests() int64 { return r.tokenRequests.Load() }

func writeCert(t testing.TB, path string, pub ed25519.PublicKey, priv ed25519.PrivateKey) {
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: issuer},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, pub, priv)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

// serveToken is the docker token protocol: GET (or POST form) /token?service=&scope=…, with
// basic auth, answering {"token": JWT}. Any valid user gets every scope asked for.
func (r *Registry) serveToken(w http.ResponseWriter, req *http.Request) {
	if err := req.ParseForm(); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	user, pass, ok := req.BasicAuth()
	if req.Method == http.MethodPost && req.PostForm.Get("grant_type") == "password" {
		user, pass, ok = req.PostForm.Get("username"), req.PostForm.Get("password"), true
	}
	authed := ok && user == Username && pass == Password
	if ok && !authed || !ok && !r.anonymous {
		w.Header().Set("WWW-Authenticate", `Basic realm="kura-test"`)
		http.Error(w, "bad credentials", http.StatusUnauthorized)
		return
	}
	var access []*token.ResourceActions
	for _, scope := range req.Form["scope"] {
		for _, s := range strings.Fields(scope) {
			parts := strings.Split(s, ":")
			if len(parts) < 3 {
				continue
			}
			actions := strings.Split(parts[len(parts)-1], ",")
			if !authed {
				actions = []string{"pull"}
			}
			access = append(access, &token.ResourceActions{Type: parts[0], Name: strings.Join(parts[1:len(parts)-1], ":"), Actions: actions})
		}
	}
	tok := r.mint(user, access)
	r.tokenRequests.Add(1)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(map[string]any{"token": tok, "access_token": tok, "expires_in": 600, "issued_at": time.Now().UTC().Format(time.RFC3339)})
}

// mint signs a JWT with EdDSA; the registry finds the key by its JWK thumbprint ("kid").
func (r *Registry) mint(subject string, access []*token.ResourceActions) string {
	now := time.Now()
	header, _ := json.Marshal(map[string]string{"alg": "EdDSA", "typ": "JWT", "kid": r.kid})
	claims, _ := json.Marshal(token.ClaimSet{
		Issuer: issuer, Subject: subject, Audience: token.AudienceList{service},
		Expiration: now.Add(10 * time.Minute).Unix(), NotBefore: now.Add(-time.Minute).Unix(), IssuedAt: now.Unix(),
		JWTID: fmt.Sprint(now.UnixNano()), Access: access,
	})
	enc := base64.RawURLEncoding
	signing := enc.EncodeToString(header) + "." + enc.EncodeToString(claims)
	return signing + "." + enc.EncodeToString(ed25519.Sign(r.key, []byte(signing)))
}

// pushToken is a token for push and pull on repo, used by the push helpers.
func (r *Registry) pushToken(repo string) string {
	return r.mint(Username, []*token.ResourceActions{{Type: "repository", Name: repo, Actions: []string{"pull", "push"}}})
}

// do sends one request straight to the registry (not through the proxy) with a push token.
func (r *Registry) do(t testing.TB, repo, method, u string, body []byte, hdr map[string]string) *http.Response {
	t.Helper()
	if strings.HasPrefix(u, "/") {
		u = r.direct.URL + u
	}
	req, err := http.NewRequest(method, u, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer "+r.pushToken(repo))
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	return resp
}

// PushBlob uploads data to repo and returns its descriptor (media type left empty).
func (r *Registry) PushBlob(t testing.TB, repo string, data []byte) ocispec.Descriptor {
	t.Helper()
	d := digest.FromBytes(data)
	resp := r.do(t, repo, http.MethodPost, "/v2/"+repo+"/blobs/uploads/", nil, nil)
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting upload to %s: %s", repo, resp.Status)
	}
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil {
		t.Fatal(err)
	}
	q := loc.Query()
	q.Set("digest", d.String())
	loc.RawQuery = q.Encode()
	resp = r.do(t, repo, http.MethodPut, loc.String(), data, map[string]string{"Content-Type": "application/octet-stream"})
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finishing upload of %s to %s: %s", d, repo, resp.Status)
	}
	return ocispec.Descriptor{Digest: d, Size: int64(len(data))}
}

// PushManifest stores a manifest (or index) under ref (a tag or its digest) and returns its descriptor.
func (r *Registry) PushManifest(t testing.TB, repo, ref, mediaType string, data []byte) ocispec.Descriptor {
	t.Helper()
	d := digest.FromBytes(data)
	if ref == "" {
		ref = d.String()
	}
	resp := r.do(t, repo, http.MethodPut, "/v2/"+repo+"/manifests/"+ref, data, map[string]string{"Content-Type": mediaType})
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("putting manifest %s:%s: %s: %s", repo, ref, resp.Status, body)
	}
	return ocispec.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(data))}
}

// Image is what PushImage stored.
type Image struct {
	Manifest ocispec.Descriptor
	Config   ocispec.Descriptor
	Layers   []ocispec.Descriptor
	// ManifestBytes and ConfigBytes are the exact bytes pushed.
	ManifestBytes, ConfigBytes []byte
}

// PushImage pushes an OCI image manifest with the given layers (media type
// application/vnd.oci.image.layer.v1.tar+zstd unless layerMediaType is set) and a config for
// platform, tagged tag (empty: by digest only).
func (r *Registry) PushImage(t testing.TB, repo, tag string, platform ocispec.Platform, layerMediaType string, layers ...[]byte) Image {
	t.Helper()
	if layerMediaType == "" {
		layerMediaType = ocispec.MediaTypeImageLayerZstd
	}
	var img Image
	diffIDs := []digest.Digest{}
	for _, l := range layers {
		d := r.PushBlob(t, repo, l)
		d.MediaType = layerMediaType
		img.Layers = append(img.Layers, d)
		diffIDs = append(diffIDs, d.Digest) // not the real uncompressed digest; enough for transport tests
	}
	cfg := ocispec.Image{Platform: platform, RootFS: ocispec.RootFS{Type: "layers", DiffIDs: diffIDs}}
	img.ConfigBytes, _ = json.Marshal(cfg)
	img.Config = r.PushBlob(t, repo, img.ConfigBytes)
	img.Config.MediaType = ocispec.MediaTypeImageConfig
	m := ocispec.Manifest{MediaType: ocispec.MediaTypeImageManifest, Config: img.Config, Layers: img.Layers}
	m.SchemaVersion = 2
	img.ManifestBytes, _ = json.Marshal(m)
	ref := tag
	if ref == "" {
		ref = digest.FromBytes(img.ManifestBytes).String()
	}
	img.Manifest = r.PushManifest(t, repo, ref, ocispec.MediaTypeImageManifest, img.ManifestBytes)
	img.Manifest.Platform = &platform
	return img
}
