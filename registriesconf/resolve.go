package registriesconf

import (
	"fmt"
	"strings"

	"github.com/distribution/reference"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/imageref"
)

// Source is one place to pull an image from.
type Source struct {
	// Ref is where to fetch: a mirror's or the rewritten primary location.
	Ref imageref.Reference
	// Name is the fully qualified name the user's reference means (before any location rewrite
	// or mirror): what the image is stored as, as podman does.
	Name imageref.Reference
	// Insecure: skip TLS verification and allow plain HTTP for Ref's registry.
	Insecure bool
	// Mirror is true for a [[registry.mirror]].
	Mirror bool
}

// PullSources resolves what a user typed into the ordered places to pull from, as podman
// does: a short name (no registry host) goes through [aliases] or unqualified-search-registries
// under short-name-mode (several candidates in enforcing mode are an error, since Kura never
// prompts; permissive and disabled try them in order); each candidate's [[registry]] entry
// then gives its mirrors (those pull-from-mirror allows), in order, then its location. A
// "docker://" reference is not a short name (as in skopeo); an "oci:" reference is one source.
// Candidates on blocked registries are skipped; when nothing is left the error is
// errdefs.ErrPermission naming the registry.
func (c *Config) PullSources(input string) ([]Source, error) {
	names, err := c.candidates(input)
	if err != nil {
		return nil, err
	}
	var sources []Source
	var blocked []string
	for _, n := range names {
		if n.Transport != imageref.Docker {
			sources = append(sources, Source{Ref: n, Name: n})
			continue
		}
		reg := c.Find(refString(n))
		if reg != nil && reg.Blocked {
			blocked = append(blocked, fmt.Sprintf("%s (prefix %q)", n.Domain, reg.Prefix))
			continue
		}
		s, err := c.sourcesOf(n, reg)
		if err != nil {
			return nil, err
		}
		sources = append(sources, s...)
	}
	if len(sources) == 0 {
		return nil, fmt.Errorf("pulling %s: registry %s is blocked in %s: %w", input, strings.Join(blocked, ", "), c.origin(), errdefs.ErrPermission)
	}
	return sources, nil
}

// PushTarget checks a push destination: a blocked registry is refused (errdefs.ErrPermission).
// A push goes to the reference as given, never to a mirror or a rewritten location.
func (c *Config) PushTarget(ref imageref.Reference) error {
	if err := c.Blocked(ref); err != nil {
		return fmt.Errorf("pushing to %s: %w", ref, err)
	}
	return nil
}

// Blocked returns an errdefs.ErrPermission error when the [[registry]] entry of a Docker
// reference is blocked, naming the files read.
func (c *Config) Blocked(ref imageref.Reference) error {
	if ref.Transport != imageref.Docker {
		return nil
	}
	if reg := c.Find(refString(ref)); reg != nil && reg.Blocked {
		return fmt.Errorf("registry %s (prefix %q) is blocked in %s: %w", ref.Domain, reg.Prefix, c.origin(), errdefs.ErrPermission)
	}
	return nil
}

// Insecure reports whether the [[registry]] entry for a host marks it insecure, or a mirror at
// that host is.
func (c *Config) Insecure(host string) bool {
	if reg := c.Find(host); reg != nil && reg.Insecure {
		return true
	}
	for _, r := range c.Registries {
		if r.Insecure && hostOf(r.Location) == host {
			return true
		}
		for _, m := range r.Mirrors {
			if m.Insecure && hostOf(m.Location) == host {
				return true
			}
		}
	}
	return false
}

func hostOf(location string) string {
	host, _, _ := strings.Cut(location, "/")
	return host
}

func (c *Config) origin() string {
	if len(c.Files) == 0 {
		return "registries.conf"
	}
	return strings.Join(c.Files, ", ")
}

// candidates lists the fully qualified names input may mean, in order.
func (c *Config) candidates(input string) ([]imageref.Reference, error) {
	if strings.HasPrefix(input, "docker://") || isTransport(input) || !IsShortName(input) {
		ref, err := imageref.Parse(input)
		if err != nil {
			return nil, err
		}
		return []imageref.Reference{ref}, nil
	}
	if _, err := reference.ParseNormalizedNamed(input); err != nil {
		return nil, fmt.Errorf("image reference %q: %v: %w", input, err, errdefs.ErrInvalid)
	}
	name := shortName(input)
	if alias, ok := c.alias(name); ok {
		ref, err := imageref.Parse("docker://" + alias + strings.TrimPrefix(input, name))
		if err != nil {
			return nil, fmt.Errorf("alias %q = %q: %w", name, alias, err)
		}
		return []imageref.Reference{ref}, nil
	}
	if len(c.UnqualifiedSearch) == 0 {
		return nil, fmt.Errorf("short name %q did not resolve to an alias and no unqualified-search-registries are defined in %s; use a fully qualified name (HOST/REPO): %w",
			input, c.origin(), errdefs.ErrInvalid)
	}
	var refs []imageref.Reference
	for _, reg := range c.UnqualifiedSearch {
		ref, err := imageref.Parse("docker://" + reg + "/" + input)
		if err != nil {
			return nil, fmt.Errorf("short name %q in %s: %w", input, reg, err)
		}
		refs = append(refs, ref)
	}
	if len(refs) > 1 && c.ShortNameMode == Enforcing {
		return nil, fmt.Errorf("short name %q is ambiguous under short-name-mode = \"enforcing\" (%s), and kura never prompts: it could be %s; use a fully qualified name or add an alias: %w",
			input, c.origin(), listRefs(refs), errdefs.ErrInvalid)
	}
	return refs, nil
}

// alias looks a short name up as typed (without tag or digest): podman's recorded choices
// first, then [aliases].
func (c *Config) alias(name string) (string, bool) {
	if a, ok := c.CachedAliases[name]; ok {
		return a, true
	}
	a, ok := c.Aliases[name]
	return a, ok
}

func listRefs(refs []imageref.Reference) string {
	s := make([]string, len(refs))
	for i, r := range refs {
		s[i] = strings.TrimPrefix(r.String(), "docker://")
	}
	return strings.Join(s, " or ")
}

// isTransport reports "oci:" and other transport prefixes, which imageref.Parse handles.
func isTransport(s string) bool {
	prefix, _, ok := strings.Cut(s, ":")
	return ok && !strings.ContainsAny(prefix, "/.") && (prefix == "oci" || prefix == "docker" || imageref.IsOtherTransport(prefix))
}

// IsShortName reports a reference without a registry host: its first path component has no
// "." or ":", is not "localhost" and is lower case (distribution/reference's rule).
func IsShortName(s string) bool {
	first, _, hasSlash := strings.Cut(shortName(s), "/")
	if !hasSlash {
		return true
	}
	return !strings.ContainsAny(first, ".:") && first != "localhost" && strings.ToLower(first) == first
}

// shortName is s without its tag and digest.
func shortName(s string) string {
	if i := strings.IndexByte(s, '@'); i >= 0 {
		s = s[:i]
	}
	if i := strings.LastIndexByte(s, ':'); i >= 0 && !strings.Contains(s[i:], "/") {
		s = s[:i]
	}
	return s
}

// refString is a Docker reference as registries.conf prefixes match it: HOST/PATH[:TAG][@DIGEST].
func refString(r imageref.Reference) string {
	s := r.Domain + "/" + r.Path
	if r.Tag != "" {
		s += ":" + r.Tag
	}
	if r.Digest != "" {
		s += "@" + r.Digest.String()
	}
	return s
}

// Find returns the [[registry]] entry with the longest prefix matching ref (HOST[/PATH...]), or nil.
func (c *Config) Find(ref string) *Registry {
	var best *Registry
	bestLen := -1
	for i := range c.Registries {
		if n := matchPrefix(ref, c.Registries[i].Prefix); n > bestLen {
			best, bestLen = &c.Registries[i], n
		}
	}
	return best
}

// matchPrefix returns the length of ref that prefix matches, or -1: the prefix must end at the
// end of ref or before ':', '/' or '@'. "*.example.com" matches any subdomain's host.
func matchPrefix(ref, prefix string) int {
	if rest, ok := strings.CutPrefix(prefix, "*."); ok {
		host := hostOf(ref)
		if h, _, ok := strings.Cut(host, ":"); ok {
			host = h
		}
		if strings.HasSuffix(host, "."+rest) {
			return len(host)
		}
		return -1
	}
	if !strings.HasPrefix(ref, prefix) {
		return -1
	}
	if len(ref) == len(prefix) || strings.ContainsRune(":/@", rune(ref[len(prefix)])) {
		return len(prefix)
	}
	return -1
}

// sourcesOf lists a qualified name's mirrors (as pull-from-mirror allows), then its location.
func (c *Config) sourcesOf(name imageref.Reference, reg *Registry) ([]Source, error) {
	if reg == nil {
		return []Source{{Ref: name, Name: name}}, nil
	}
	full := refString(name)
	prefixLen := matchPrefix(full, reg.Prefix)
	digested := name.Digest != ""
	var sources []Source
	for _, m := range reg.Mirrors {
		mode := m.PullFromMirror
		if reg.MirrorByDigestOnly {
			mode = PullDigestOnly
		}
		if mode == PullDigestOnly && !digested || mode == PullTagOnly && digested {
			continue
		}
		ref, err := rewrite(full, prefixLen, m.Location)
		if err != nil {
			return nil, fmt.Errorf("mirror %s of %s: %w", m.Location, reg.Prefix, err)
		}
		sources = append(sources, Source{Ref: ref, Name: name, Insecure: m.Insecure, Mirror: true})
	}
	primary := name
	if reg.Location != "" {
		var err error
		if primary, err = rewrite(full, prefixLen, reg.Location); err != nil {
			return nil, fmt.Errorf("location %s of %s: %w", reg.Location, reg.Prefix, err)
		}
	}
	return append(sources, Source{Ref: primary, Name: name, Insecure: reg.Insecure}), nil
}

func rewrite(full string, prefixLen int, location string) (imageref.Reference, error) {
	return imageref.Parse("docker://" + location + full[prefixLen:])
}
