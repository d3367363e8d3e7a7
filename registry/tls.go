package registry

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/kura-oci/kura/errdefs"
)

// HostTLS is how the client reaches one registry host (host[:port] as written in references).
type HostTLS struct {
	// Insecure skips certificate verification and lets the client fall back to plain HTTP
	// (podman's --tls-verify=false, or insecure = true in registries.conf). When false, the
	// host is reached over verified HTTPS only, loopback and private addresses included.
	Insecure bool
	// CertDir holds *.crt CA certificates (added to the system pool) and *.cert/*.key client
	// certificate pairs, as containers-certs.d(5) describes; "" for none.
	CertDir string
}

// DefaultCertDirs are the per-host certificate directories containers/image searches, in its
// order: the first DIR/HOST[:PORT] that exists is the one used.
func DefaultCertDirs() []string {
	var dirs []string
	if home, err := os.UserHomeDir(); err == nil && home != "" {
		dirs = append(dirs, filepath.Join(home, ".config", "containers", "certs.d"))
	}
	return append(dirs, "/etc/containers/certs.d", "/etc/docker/certs.d")
}

// FindCertDir returns the first existing DIR/HOST among dirs, or "" when there is none.
// Unreadable parents are skipped, as containers/image does.
func FindCertDir(dirs []string, host string) (string, error) {
	if host == "" || host == "." || host == ".." || strings.ContainsAny(host, `/\`) {
		return "", fmt.Errorf("registry host %q cannot name a certificate directory: %w", host, errdefs.ErrInvalid)
	}
	for _, d := range dirs {
		p := filepath.Join(d, host)
		_, err := os.Stat(p)
		switch {
		case err == nil:
			return p, nil
		case errors.Is(err, fs.ErrNotExist), errors.Is(err, fs.ErrPermission):
			continue
		default:
			return "", fmt.Errorf("certificate directory %s: %w", p, err)
		}
	}
	return "", nil
}

// maxCertFileSize bounds one certificate or key file; real ones are a few KiB.
const maxCertFileSize = 1 << 20

// tlsConfig builds the client TLS configuration for one host.
func tlsConfig(h HostTLS) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: h.Insecure} //nolint:gosec // Insecure is asked for
	if h.CertDir == "" {
		return cfg, nil
	}
	if err := loadCertDir(h.CertDir, cfg); err != nil {
		return nil, err
	}
	return cfg, nil
}

// loadCertDir applies containers/image's certs.d rules: every *.crt is a CA added to the system
// pool; every *.cert needs the *.key of the same base name and is a client certificate; a *.key
// without its *.cert is an error. A directory that does not exist holds nothing.
func loadCertDir(dir string, cfg *tls.Config) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("certificate directory %s: %w", dir, err)
	}
	has := map[string]bool{}
	for _, e := range entries {
		has[e.Name()] = true
	}
	for _, e := range entries {
		name := e.Name()
		switch {
		case strings.HasSuffix(name, ".crt"):
			if err := addCA(cfg, filepath.Join(dir, name)); err != nil {
				return err
			}
		case strings.HasSuffix(name, ".cert"):
			key := strings.TrimSuffix(name, ".cert") + ".key"
			if !has[key] {
				return fmt.Errorf("certificate directory %s: missing key %s for client certificate %s (CA certificates end in .crt): %w", dir, key, name, errdefs.ErrInvalid)
			}
			pair, err := loadKeyPair(filepath.Join(dir, name), filepath.Join(dir, key))
			if err != nil {
				return err
			}
			cfg.Certificates = append(cfg.Certificates, pair)
		case strings.HasSuffix(name, ".key"):
			if cert := strings.TrimSuffix(name, ".key") + ".cert"; !has[cert] {
				return fmt.Errorf("certificate directory %s: missing client certificate %s for key %s: %w", dir, cert, name, errdefs.ErrInvalid)
			}
		}
	}
	return nil
}

func addCA(cfg *tls.Config, path string) error {
	pem, err := readCertFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil // a dangling link, or removed since the listing: containers/image skips it too
	}
	if err != nil {
		return err
	}
	if cfg.RootCAs == nil {
		if cfg.RootCAs, err = x509.SystemCertPool(); err != nil {
			return fmt.Errorf("system certificate pool: %w", err)
		}
	}
	if !cfg.RootCAs.AppendCertsFromPEM(pem) {
		return fmt.Errorf("CA certificate %s: no PEM certificate in it: %w", path, errdefs.ErrInvalid)
	}
	return nil
}

func loadKeyPair(certPath, keyPath string) (tls.Certificate, error) {
	cert, err := readCertFile(certPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	key, err := readCertFile(keyPath)
	if err != nil {
		return tls.Certificate{}, err
	}
	pair, err := tls.X509KeyPair(cert, key)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("client certificate %s with key %s: %v: %w", certPath, keyPath, err, errdefs.ErrInvalid)
	}
	return pair, nil
}

func readCertFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxCertFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxCertFileSize {
		return nil, fmt.Errorf("%s is over %d bytes: %w", path, maxCertFileSize, errdefs.ErrInvalid)
	}
	return b, nil
}

// plainHTTPGuard refuses plain-HTTP requests to a host that must be reached over verified HTTPS.
// go-containerregistry races an HTTP ping beside the HTTPS one for loopback and private
// addresses; podman never does, and neither do we unless the host is Insecure.
type plainHTTPGuard struct {
	inner http.RoundTripper
	host  string // as in URLs
}

func (g *plainHTTPGuard) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Scheme == "http" && req.URL.Host == g.host {
		return nil, fmt.Errorf("refusing plain HTTP to %s: TLS verification is on (use --tls-verify=false, or insecure = true for it in registries.conf): %w",
			g.host, errdefs.ErrPermission)
	}
	return g.inner.RoundTrip(req)
}
