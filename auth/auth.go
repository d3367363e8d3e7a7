// Package auth owns registry credentials: explicit --creds, and podman/docker auth files looked up
// in podman's order. A Keychain plugs into go-containerregistry's transport, which performs the
// basic or bearer-token handshake with those credentials.
package auth

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/kura-oci/kura/errdefs"
)

// maxAuthFileSize bounds what we read from an auth file; real ones are a few KiB.
const maxAuthFileSize = 4 << 20

// Credential is a username/password pair or an identity (refresh) token for one registry.
type Credential struct {
	Username      string
	Password      string
	IdentityToken string
}

// IsZero reports an empty (anonymous) credential.
func (c Credential) IsZero() bool { return c == Credential{} }

// Option configures a Keychain.
type Option func(*Keychain)

// WithCreds uses "USER[:PASSWORD]" for every registry, before any auth file (podman --creds).
func WithCreds(userPass string) Option {
	return func(k *Keychain) { k.creds = &userPass }
}

// WithAuthFile replaces the primary auth file ($REGISTRY_AUTH_FILE or
// ${XDG_RUNTIME_DIR}/containers/auth.json), as podman --authfile does.
func WithAuthFile(path string) Option {
	return func(k *Keychain) { k.authFile = path }
}

// Keychain finds credentials for a registry repository. It implements authn.Keychain.
type Keychain struct {
	creds    *string
	authFile string

	mu   sync.Mutex
	used map[string]Source // host → where its credential came from, as last resolved
}

// NewKeychain returns a Keychain; with no options it reads the auth files in podman's order.
func NewKeychain(opts ...Option) *Keychain {
	k := &Keychain{}
	for _, o := range opts {
		o(k)
	}
	return k
}

// ParseCreds splits "USER[:PASSWORD]". The user must not be empty.
func ParseCreds(s string) (Credential, error) {
	user, pass, _ := strings.Cut(s, ":")
	if user == "" {
		return Credential{}, fmt.Errorf("credentials %q: empty user name (want USER[:PASSWORD]): %w", redact(s), errdefs.ErrInvalid)
	}
	return Credential{Username: user, Password: pass}, nil
}

func redact(s string) string {
	if u, _, ok := strings.Cut(s, ":"); ok {
		return u + ":***"
	}
	return s
}

// AuthFilePaths returns the files consulted, in order:
//  1. the primary file: --authfile, else $REGISTRY_AUTH_FILE, else ${XDG_RUNTIME_DIR}/containers/auth.json
//     (/run/containers/UID/auth.json when XDG_RUNTIME_DIR is unset);
//  2. ${XDG_CONFIG_HOME:-~/.config}/containers/auth.json;
//  3. ${DOCKER_CONFIG:-~/.docker}/config.json;
//  4. ~/.dockercfg (legacy format: no "auths" wrapper).
//
// This is containers-auth.json(5): an explicit file replaces the primary one, the rest still apply.
func (k *Keychain) AuthFilePaths() []AuthFile {
	home, _ := os.UserHomeDir()
	var paths []AuthFile
	switch {
	case k.authFile != "":
		paths = append(paths, AuthFile{Path: k.authFile})
	case os.Getenv("REGISTRY_AUTH_FILE") != "":
		paths = append(paths, AuthFile{Path: os.Getenv("REGISTRY_AUTH_FILE")})
	case os.Getenv("XDG_RUNTIME_DIR") != "":
		paths = append(paths, AuthFile{Path: filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "containers", "auth.json")})
	default:
		paths = append(paths, AuthFile{Path: fmt.Sprintf("/run/containers/%d/auth.json", os.Getuid())})
	}
	if cfg := os.Getenv("XDG_CONFIG_HOME"); cfg != "" {
		paths = append(paths, AuthFile{Path: filepath.Join(cfg, "containers", "auth.json")})
	} else if home != "" {
		paths = append(paths, AuthFile{Path: filepath.Join(home, ".config", "containers", "auth.json")})
	}
	if dc := os.Getenv("DOCKER_CONFIG"); dc != "" {
		paths = append(paths, AuthFile{Path: filepath.Join(dc, "config.json")})
	} else if home != "" {
		paths = append(paths, AuthFile{Path: filepath.Join(home, ".docker", "config.json")})
	}
	if home != "" {
		paths = append(paths, AuthFile{Path: filepath.Join(home, ".dockercfg"), Legacy: true})
	}
	return paths
}

// AuthFile is one credentials file; Legacy files map keys to entries without an "auths" wrapper.
type AuthFile struct {
	Path   string
	Legacy bool
}

// Lookup returns the credential for repository "DOMAIN/PATH" (or just "DOMAIN"), and where it was
// found. --creds wins over every file. Then each file in order: a credential helper named for the
// domain in its "credHelpers", else its "auths" entry (the most specific key wins: DOMAIN/a/b/c,
// then DOMAIN/a/b, DOMAIN/a, DOMAIN), else its default helper "credsStore". The first match wins.
func (k *Keychain) Lookup(repo string) (Credential, Source, error) {
	if k.creds != nil {
		c, err := ParseCreds(*k.creds)
		return c, Source{Kind: FromCreds}, err
	}
	candidates := lookupKeys(repo)
	domain := candidates[len(candidates)-1]
	for _, f := range k.AuthFilePaths() {
		doc, err := readAuthFile(f)
		if err != nil {
			return Credential{}, Source{}, err
		}
		c, src, err := doc.lookup(f.Path, domain, candidates)
		if err != nil || !c.IsZero() {
			return c, src, err
		}
	}
	return Credential{}, Source{}, nil
}

// lookup finds domain's credential in one file (see Lookup); a helper that knows nothing
// of the domain does not end the search.
func (d authDoc) lookup(path, domain string, candidates []string) (Credential, Source, error) {
	if name, ok := d.helpers[domain]; ok {
		c, err := helperGet(name, domain)
		if err != nil || !c.IsZero() {
			return c, Source{Kind: FromHelper, Name: name}, err
		}
	}
	for _, key := range candidates {
		if e, ok := d.entries[key]; ok {
			c, err := e.credential()
			if err != nil {
				return Credential{}, Source{}, fmt.Errorf("auth file %s, entry %q: %w", path, key, err)
			}
			if !c.IsZero() {
				return c, Source{Kind: FromFile, Name: path}, nil
			}
		}
	}
	if d.store != "" {
		c, err := helperGet(d.store, domain)
		if err != nil || !c.IsZero() {
			return c, Source{Kind: FromHelper, Name: d.store}, err
		}
	}
	return Credential{}, Source{}, nil
}

// dockerHubServer is the server URL docker login gives credential helpers for Docker Hub.
const dockerHubServer = "https://index.docker.io/v1/"

// helperGet asks a helper for domain, and for Docker Hub also under docker's own server URL,
// so that credentials saved by docker login are found.
func helperGet(name, domain string) (Credential, error) {
	c, err := HelperGet(name, domain)
	if err == nil && c.IsZero() && domain == "docker.io" {
		return HelperGet(name, dockerHubServer)
	}
	return c, err
}

// Resolve implements authn.Keychain. A registry resource is looked up by its host; a repository
// resource (name.Repository) by its full name so namespace-scoped entries apply. The source used
// is remembered per host for Explain.
func (k *Keychain) Resolve(res authn.Resource) (authn.Authenticator, error) {
	c, src, err := k.Lookup(res.String())
	if err != nil {
		return nil, err
	}
	k.mu.Lock()
	if k.used == nil {
		k.used = map[string]Source{}
	}
	k.used[res.RegistryStr()] = src
	k.mu.Unlock()
	if c.IsZero() {
		return authn.Anonymous, nil
	}
	return authn.FromConfig(authn.AuthConfig{Username: c.Username, Password: c.Password, IdentityToken: c.IdentityToken}), nil
}

// lookupKeys lists the keys to try for "DOMAIN/a/b", most specific first, with the domain normalised.
func lookupKeys(repo string) []string {
	domain, path, _ := strings.Cut(repo, "/")
	domain = normalizeDomain(domain)
	var keys []string
	for path != "" {
		keys = append(keys, domain+"/"+path)
		i := strings.LastIndexByte(path, '/')
		if i < 0 {
			break
		}
		path = path[:i]
	}
	return append(keys, domain)
}

func normalizeDomain(d string) string {
	switch d {
	case "index.docker.io", "registry-1.docker.io":
		return "docker.io"
	}
	return d
}

// normalizeKey turns file keys such as "https://index.docker.io/v1/" into "docker.io": keys with a
// scheme are docker-style URLs whose path is not a repository namespace.
func normalizeKey(key string) string {
	if rest, ok := strings.CutPrefix(key, "https://"); ok {
		key, _, _ = strings.Cut(rest, "/")
	} else if rest, ok := strings.CutPrefix(key, "http://"); ok {
		key, _, _ = strings.Cut(rest, "/")
	}
	domain, path, hasPath := strings.Cut(key, "/")
	domain = normalizeDomain(domain)
	if hasPath {
		return domain + "/" + path
	}
	return domain
}

type authEntry struct {
	Auth          string `json:"auth"`
	Username      string `json:"username"`
	Password      string `json:"password"`
	IdentityToken string `json:"identitytoken"`
}

func (e authEntry) credential() (Credential, error) {
	c := Credential{Username: e.Username, Password: e.Password, IdentityToken: e.IdentityToken}
	if e.Auth != "" {
		raw, err := base64.StdEncoding.DecodeString(strings.TrimSpace(e.Auth))
		if err != nil {
			return Credential{}, fmt.Errorf("\"auth\" is not base64: %w", errdefs.ErrInvalid)
		}
		user, pass, ok := strings.Cut(string(raw), ":")
		if !ok {
			return Credential{}, fmt.Errorf("\"auth\" does not decode to USER:PASSWORD: %w", errdefs.ErrInvalid)
		}
		c.Username, c.Password = user, pass
	}
	return c, nil
}

// authDoc is what one auth file says: entries keyed by normalised key, per-domain credential
// helpers ("credHelpers") and a default helper ("credsStore").
type authDoc struct {
	entries map[string]authEntry
	helpers map[string]string
	store   string
}

// readAuthFile reads one file; a missing file says nothing. When two keys normalise to the same
// one, a key spelled exactly as normalised wins, else the first in sorted order (JSON object
// order carries no meaning), so lookups are deterministic.
func readAuthFile(f AuthFile) (authDoc, error) {
	fh, err := os.Open(f.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return authDoc{}, nil
	}
	if err != nil {
		return authDoc{}, fmt.Errorf("opening auth file: %w", err)
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxAuthFileSize+1))
	if err != nil {
		return authDoc{}, fmt.Errorf("reading auth file %s: %w", f.Path, err)
	}
	if len(data) > maxAuthFileSize {
		return authDoc{}, fmt.Errorf("auth file %s is over %d bytes: %w", f.Path, maxAuthFileSize, errdefs.ErrInvalid)
	}
	var doc struct {
		Auths       map[string]authEntry `json:"auths"`
		CredHelpers map[string]string    `json:"credHelpers"`
		CredsStore  string               `json:"credsStore"`
	}
	if f.Legacy {
		err = json.Unmarshal(data, &doc.Auths)
	} else {
		err = json.Unmarshal(data, &doc)
	}
	if err != nil {
		return authDoc{}, fmt.Errorf("parsing auth file %s: %v: %w", f.Path, err, errdefs.ErrInvalid)
	}
	d := authDoc{entries: normalized(doc.Auths), helpers: normalized(doc.CredHelpers), store: doc.CredsStore}
	for _, name := range append(slices.Collect(maps.Values(d.helpers)), d.store) {
		if name != "" && !validHelperName(name) {
			return authDoc{}, fmt.Errorf("auth file %s: credential helper name %q: %w", f.Path, name, errdefs.ErrInvalid)
		}
	}
	return d, nil
}

// normalized re-keys m by normalizeKey (see readAuthFile for collisions).
func normalized[V any](m map[string]V) map[string]V {
	out := make(map[string]V, len(m))
	for _, k := range slices.Sorted(maps.Keys(m)) {
		nk := normalizeKey(k)
		if _, dup := out[nk]; dup && nk != k {
			continue
		}
		out[nk] = m[k]
	}
	return out
}
