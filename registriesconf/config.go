// Package registriesconf owns containers-registries.conf(5) (version 2) as podman reads it: the
// files and drop-ins and how they merge, short-name resolution (unqualified-search-registries,
// aliases, short-name-mode), and per-registry prefix rewrites, mirrors, insecure and blocked.
// It turns what a user typed into the ordered places to pull from.
package registriesconf

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/distribution/reference"

	"github.com/kura-oci/kura/errdefs"
)

// Short-name modes (short-name-mode).
const (
	Enforcing  = "enforcing"
	Permissive = "permissive"
	Disabled   = "disabled"
)

// pull-from-mirror values.
const (
	PullAll        = "all"
	PullDigestOnly = "digest-only"
	PullTagOnly    = "tag-only"
)

// maxFileSize bounds one configuration file; real ones are a few KiB.
const maxFileSize = 4 << 20

// Mirror is one [[registry.mirror]] entry.
type Mirror struct {
	Location       string `toml:"location"`
	Insecure       bool   `toml:"insecure"`
	PullFromMirror string `toml:"pull-from-mirror"`
}

// Registry is one [[registry]] entry.
type Registry struct {
	// Prefix selects the references the entry applies to: HOST[:PORT][/PATH], or *.DOMAIN.
	// Empty means Location.
	Prefix string `toml:"prefix"`
	// Location replaces the matched prefix when pulling (empty for a wildcard prefix: keep the host).
	Location string `toml:"location"`
	Insecure bool   `toml:"insecure"`
	Blocked  bool   `toml:"blocked"`
	// MirrorByDigestOnly is the older registry-wide form of pull-from-mirror = "digest-only".
	MirrorByDigestOnly bool     `toml:"mirror-by-digest-only"`
	Mirrors            []Mirror `toml:"mirror"`
}

// file is one registries.conf or drop-in as written. Pointer fields tell "absent" from "empty",
// which merging needs.
type file struct {
	UnqualifiedSearch *[]string         `toml:"unqualified-search-registries"`
	ShortNameMode     string            `toml:"short-name-mode"`
	Registries        []Registry        `toml:"registry"`
	Aliases           map[string]string `toml:"aliases"`
}

// Config is the merged configuration.
type Config struct {
	UnqualifiedSearch []string
	ShortNameMode     string
	// Aliases are the merged [aliases] of the configuration files.
	Aliases map[string]string
	// CachedAliases are podman's recorded prompt choices (short-name-aliases.conf), which win
	// over Aliases.
	CachedAliases map[string]string
	// Registries are sorted by prefix.
	Registries []Registry
	// Files are the files read, in order, for messages.
	Files []string
}

// Paths are the files podman reads: File, then the *.conf files of each DropIns directory in
// lexical order, directory by directory; and AliasCache, where podman records the choices made
// at its short-name prompt.
type Paths struct {
	File string
	// FileRequired: File was named by the user ($CONTAINERS_REGISTRIES_CONF), so it must exist,
	// as in containers/image; the default files may be missing.
	FileRequired bool
	DropIns      []string
	AliasCache   string
}

// DefaultPaths are containers/image's: $CONTAINERS_REGISTRIES_CONF, else
// $HOME/.config/containers/registries.conf if it exists (then only the user's drop-ins), else
// /etc/containers/registries.conf; and the drop-ins /etc/containers/registries.conf.d and
// $HOME/.config/containers/registries.conf.d.
//
// The alias cache is /var/cache/containers/short-name-aliases.conf for root and
// ${XDG_CACHE_HOME:-$HOME/.cache}/containers/short-name-aliases.conf otherwise.
func DefaultPaths(getenv func(string) string, home string) Paths {
	p := defaultFiles(getenv, home)
	cache := getenv("XDG_CACHE_HOME")
	if cache == "" {
		cache = filepath.Join(home, ".cache")
	}
	if os.Geteuid() == 0 {
		cache = "/var/cache"
	}
	p.AliasCache = filepath.Join(cache, "containers", "short-name-aliases.conf")
	return p
}

func defaultFiles(getenv func(string) string, home string) Paths {
	userFile := filepath.Join(home, ".config", "containers", "registries.conf")
	userDir := filepath.Join(home, ".config", "containers", "registries.conf.d")
	if f := getenv("CONTAINERS_REGISTRIES_CONF"); f != "" {
		return Paths{File: f, FileRequired: true, DropIns: []string{"/etc/containers/registries.conf.d", userDir}}
	}
	if home != "" {
		if _, err := os.Stat(userFile); err == nil {
			return Paths{File: userFile, DropIns: []string{userDir}}
		}
	}
	return Paths{File: "/etc/containers/registries.conf", DropIns: []string{"/etc/containers/registries.conf.d", userDir}}
}

// Load reads and merges the files of p. Missing files and directories are empty; a file that
// does not parse or validate is an error (errdefs.ErrInvalid) naming it.
func Load(p Paths) (*Config, error) {
	c := &Config{ShortNameMode: Permissive, Aliases: map[string]string{}, CachedAliases: map[string]string{}}
	byPrefix := map[string]Registry{}
	files := []string{p.File}
	for _, d := range p.DropIns {
		names, err := dropIns(d)
		if err != nil {
			return nil, err
		}
		files = append(files, names...)
	}
	for _, name := range files {
		f, err := readFile(name)
		if errors.Is(err, fs.ErrNotExist) && name == p.File && p.FileRequired {
			return nil, fmt.Errorf("registries configuration %s: %w", name, errdefs.ErrNotFound)
		}
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, err
		}
		if err := c.merge(f, byPrefix); err != nil {
			return nil, fmt.Errorf("%s: %w", name, err)
		}
		c.Files = append(c.Files, name)
	}
	if p.AliasCache != "" {
		if err := c.loadAliasCache(p.AliasCache); err != nil {
			return nil, err
		}
	}
	prefixes := make([]string, 0, len(byPrefix))
	for p := range byPrefix {
		prefixes = append(prefixes, p)
	}
	sort.Strings(prefixes)
	for _, p := range prefixes {
		c.Registries = append(c.Registries, byPrefix[p])
	}
	return c, nil
}

func dropIns(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("registries.conf.d %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries { // ReadDir sorts by name
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".conf") {
			names = append(names, filepath.Join(dir, e.Name()))
		}
	}
	return names, nil
}

func readFile(name string) (*file, error) {
	fh, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	data, err := io.ReadAll(io.LimitReader(fh, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", name, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("%s is over %d bytes: %w", name, maxFileSize, errdefs.ErrInvalid)
	}
	var f file
	md, err := toml.Decode(string(data), &f)
	if err != nil {
		return nil, fmt.Errorf("%s: %v: %w", name, err, errdefs.ErrInvalid)
	}
	if md.IsDefined("registries") {
		return nil, fmt.Errorf("%s: the version 1 format ([registries.search] and the like) is not read; write version 2 (containers-registries.conf(5)): %w",
			name, errdefs.ErrUnsupported)
	}
	return &f, nil
}

// loadAliasCache reads podman's short-name-aliases.conf: [aliases] only; a missing file is empty.
func (c *Config) loadAliasCache(path string) error {
	f, err := readFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if err := mergeAliases(c.CachedAliases, f.Aliases); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

// mergeAliases applies a file's aliases over dst: an empty value removes one.
func mergeAliases(dst, src map[string]string) error {
	for k, v := range src {
		if v == "" {
			delete(dst, k)
			continue
		}
		if err := validAlias(k, v); err != nil {
			return err
		}
		dst[k] = v
	}
	return nil
}

// merge applies one file over what was read before, as containers/image does: a later
// unqualified-search-registries or short-name-mode replaces the earlier one, aliases are
// overridden one by one, and a [[registry]] replaces the one with the same prefix.
func (c *Config) merge(f *file, byPrefix map[string]Registry) error {
	if f.UnqualifiedSearch != nil {
		for _, r := range *f.UnqualifiedSearch {
			if err := validHost(r); err != nil {
				return fmt.Errorf("unqualified-search-registries: %w", err)
			}
		}
		c.UnqualifiedSearch = *f.UnqualifiedSearch
	}
	switch f.ShortNameMode {
	case "":
	case Enforcing, Permissive, Disabled:
		c.ShortNameMode = f.ShortNameMode
	default:
		return fmt.Errorf("short-name-mode %q: want enforcing, permissive or disabled: %w", f.ShortNameMode, errdefs.ErrInvalid)
	}
	if err := mergeAliases(c.Aliases, f.Aliases); err != nil {
		return err
	}
	for _, r := range f.Registries {
		r, err := validRegistry(r)
		if err != nil {
			return err
		}
		byPrefix[r.Prefix] = r
	}
	return nil
}

// validHost checks an unqualified-search registry: HOST[:PORT][/NAMESPACE].
func validHost(r string) error {
	if _, err := reference.ParseNormalizedNamed(r + "/x"); err != nil || IsShortName(r+"/x") {
		return fmt.Errorf("%q is not a registry host: %w", r, errdefs.ErrInvalid)
	}
	return nil
}

// validAlias checks an [aliases] entry: a short name without tag or digest, mapped to a fully
// qualified name without tag or digest (an empty value, which removes an alias, is handled by
// the caller).
func validAlias(short, long string) error {
	if !IsShortName(short) || shortName(short) != short {
		return fmt.Errorf("[aliases] %q: want a short name without a registry, tag or digest: %w", short, errdefs.ErrInvalid)
	}
	if _, err := reference.ParseNormalizedNamed(short); err != nil {
		return fmt.Errorf("[aliases] %q: %v: %w", short, err, errdefs.ErrInvalid)
	}
	if _, err := reference.ParseNormalizedNamed(long); err != nil || IsShortName(long) || shortName(long) != long {
		return fmt.Errorf("[aliases] %q = %q: want a fully qualified name (HOST/REPO) without tag or digest: %w", short, long, errdefs.ErrInvalid)
	}
	return nil
}

// validRegistry checks a [[registry]] entry and fills in its prefix.
func validRegistry(r Registry) (Registry, error) {
	for _, loc := range append([]string{r.Prefix, r.Location}, mirrorLocations(r)...) {
		if strings.Contains(loc, "://") {
			return r, fmt.Errorf("[[registry]] %q: URI schemes are not supported in locations and prefixes: %w", loc, errdefs.ErrInvalid)
		}
	}
	r.Location = strings.TrimSuffix(r.Location, "/")
	r.Prefix = strings.TrimSuffix(r.Prefix, "/")
	if r.Prefix == "" {
		r.Prefix = r.Location
	}
	if r.Prefix == "" {
		return r, fmt.Errorf("[[registry]]: both prefix and location are unset: %w", errdefs.ErrInvalid)
	}
	wildcard := strings.HasPrefix(r.Prefix, "*.")
	if r.Location == "" && !wildcard {
		return r, fmt.Errorf("[[registry]] prefix %q: an empty location needs a wildcard prefix (*.example.com): %w", r.Prefix, errdefs.ErrInvalid)
	}
	if strings.Contains(r.Location, "*") || strings.Contains(strings.TrimPrefix(r.Prefix, "*."), "*") {
		return r, fmt.Errorf("[[registry]] prefix %q: a wildcard is allowed only as the prefix's leading \"*.\": %w", r.Prefix, errdefs.ErrInvalid)
	}
	for i, m := range r.Mirrors {
		m.Location = strings.TrimSuffix(m.Location, "/")
		if m.Location == "" {
			return r, fmt.Errorf("[[registry]] prefix %q: a mirror without a location: %w", r.Prefix, errdefs.ErrInvalid)
		}
		switch m.PullFromMirror {
		case "", PullAll, PullDigestOnly, PullTagOnly:
		default:
			return r, fmt.Errorf("[[registry]] prefix %q: pull-from-mirror %q: want all, digest-only or tag-only: %w", r.Prefix, m.PullFromMirror, errdefs.ErrInvalid)
		}
		if r.MirrorByDigestOnly && m.PullFromMirror != "" {
			return r, fmt.Errorf("[[registry]] prefix %q: mirror-by-digest-only and a mirror's pull-from-mirror cannot both be set: %w", r.Prefix, errdefs.ErrInvalid)
		}
		r.Mirrors[i] = m
	}
	return r, nil
}

func mirrorLocations(r Registry) []string {
	locs := make([]string, len(r.Mirrors))
	for i, m := range r.Mirrors {
		locs[i] = m.Location
	}
	return locs
}
