// Package hoststoml reads containerd's registry host configuration (the CRI plugin's
// registry.config_path, conventionally /etc/containerd/certs.d: a directory HOST[:PORT] per
// registry holding a hosts.toml) as registries.conf entries, so that Kura's pulls for
// containerd (the snapshotter's remote path) use the mirrors containerd uses.
//
// What maps: `server` (the upstream; default https://HOST) becomes the entry's location, and
// each [host."URL"] in file order a mirror, tried before it; a host without the "resolve"
// capability is used for pulls by digest only (containerd resolves tags only through hosts
// that can); an http:// URL or skip_verify = true marks it insecure (Kura then allows plain
// HTTP and unverified TLS for that host). What does not: ca, client, header, dial_timeout
// (Kura's TLS files come from its certs.d lookup or --cert-dir), a host URL with a path
// (override_path or a namespace path: Kura's mirrors name a host), and the _default
// directory; such a host is left out, and Load says so in its notes.
package hoststoml

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/registriesconf"
)

// maxFileSize bounds one hosts.toml; real ones are a few hundred bytes.
const maxFileSize = 1 << 20

type hostsFile struct {
	Server     string          `toml:"server"`
	SkipVerify bool            `toml:"skip_verify"`
	Hosts      map[string]host `toml:"host"`
}

type host struct {
	Capabilities *[]string `toml:"capabilities"`
	SkipVerify   bool      `toml:"skip_verify"`
	OverridePath bool      `toml:"override_path"`
}

// Load reads dir/HOST/hosts.toml for every HOST directory of dir. A missing dir is empty.
// notes are what was left out, for the log; a file that does not parse is an error
// (errdefs.ErrInvalid) naming it.
func Load(dir string) (regs []registriesconf.Registry, notes []string, err error) {
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("hosts.toml directory: %w", err)
	}
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		if e.Name() == "_default" {
			notes = append(notes, filepath.Join(dir, e.Name())+": the _default host configuration is not read")
			continue
		}
		r, n, err := loadHost(filepath.Join(dir, e.Name(), "hosts.toml"), e.Name())
		if errors.Is(err, fs.ErrNotExist) {
			continue // a directory of certificates only
		}
		if err != nil {
			return nil, nil, err
		}
		regs, notes = append(regs, r), append(notes, n...)
	}
	return regs, notes, nil
}

// loadHost reads one hosts.toml, the configuration of registry host name.
func loadHost(path, name string) (registriesconf.Registry, []string, error) {
	b, err := readFile(path)
	if err != nil {
		return registriesconf.Registry{}, nil, err
	}
	var f hostsFile
	md, err := toml.Decode(string(b), &f)
	if err != nil {
		return registriesconf.Registry{}, nil, fmt.Errorf("%s: %v: %w", path, err, errdefs.ErrInvalid)
	}
	r := registriesconf.Registry{Prefix: name, Location: name}
	var notes []string
	if f.Server != "" {
		loc, insecure, err := location(f.Server)
		if err != nil {
			return r, nil, fmt.Errorf("%s: server: %w", path, err)
		}
		r.Location, r.Insecure = loc, insecure || f.SkipVerify
	}
	for _, u := range hostOrder(md) {
		h := f.Hosts[u]
		loc, insecure, err := location(u)
		if err != nil || h.OverridePath {
			notes = append(notes, fmt.Sprintf("%s: host %q left out: a mirror is a host[:port] URL without a path (%v)", path, u, err))
			continue
		}
		m := registriesconf.Mirror{Location: loc, Insecure: insecure || h.SkipVerify}
		switch caps := h.Capabilities; {
		case caps == nil || slices.Contains(*caps, "resolve") && slices.Contains(*caps, "pull"):
		case slices.Contains(*caps, "pull"):
			m.PullFromMirror = registriesconf.PullDigestOnly
		default:
			notes = append(notes, fmt.Sprintf("%s: host %q left out: no pull capability", path, u))
			continue
		}
		r.Mirrors = append(r.Mirrors, m)
	}
	return r, notes, nil
}

// hostOrder is the [host."URL"] tables in file order: containerd tries them in that order.
func hostOrder(md toml.MetaData) []string {
	var out []string
	for _, k := range md.Keys() {
		if len(k) == 2 && k[0] == "host" && !slices.Contains(out, k[1]) {
			out = append(out, k[1])
		}
	}
	return out
}

// location is a server or host URL as a registries.conf location: HOST[:PORT], and whether it
// is plain HTTP. A URL with a path other than containerd's default /v2 is refused.
func location(raw string) (string, bool, error) {
	if !strings.Contains(raw, "://") {
		raw = "https://" + raw
	}
	u, err := url.Parse(raw)
	if err != nil {
		return "", false, fmt.Errorf("%q: %v: %w", raw, err, errdefs.ErrInvalid)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return "", false, fmt.Errorf("%q: want http(s)://HOST[:PORT]: %w", raw, errdefs.ErrInvalid)
	}
	if p := strings.TrimSuffix(u.Path, "/"); p != "" && p != "/v2" {
		return "", false, fmt.Errorf("%q: a path is not supported: %w", raw, errdefs.ErrUnsupported)
	}
	return u.Host, u.Scheme == "http", nil
}

func readFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	if len(b) > maxFileSize {
		return nil, fmt.Errorf("%s is over %d bytes: %w", path, maxFileSize, errdefs.ErrInvalid)
	}
	return b, nil
}
