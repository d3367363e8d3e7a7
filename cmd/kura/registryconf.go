package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registriesconf"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/source"
)

// config loads registries.conf (and its drop-ins) once per command, from --registries-conf,
// else $CONTAINERS_REGISTRIES_CONF, else podman's default files.
func (f *registryFlags) config() (*registriesconf.Config, error) {
	if f.conf != nil {
		return f.conf, nil
	}
	home, _ := os.UserHomeDir()
	getenv := os.Getenv
	if f.regConf != "" {
		if _, err := os.Stat(f.regConf); err != nil {
			return nil, usageError{fmt.Errorf("--registries-conf: %w", err)}
		}
		getenv = func(k string) string {
			if k == "CONTAINERS_REGISTRIES_CONF" {
				return f.regConf
			}
			return os.Getenv(k)
		}
	}
	c, err := registriesconf.Load(registriesconf.DefaultPaths(getenv, home))
	if err != nil {
		return nil, err
	}
	if f.extend != nil {
		if err := f.extend(c); err != nil {
			return nil, err
		}
	}
	f.conf = c
	return c, nil
}

// hostTLS is podman's TLS rule for one registry host: an explicit --tls-verify decides for every
// registry; otherwise TLS is verified unless registries.conf marks the host insecure. --cert-dir
// replaces the certs.d lookup ($HOME/.config/containers/certs.d, /etc/containers/certs.d,
// /etc/docker/certs.d, each with a HOST[:PORT] directory).
func (f *registryFlags) hostTLS(host string) (registry.HostTLS, error) {
	h := registry.HostTLS{}
	if f.tlsSet != nil && f.tlsSet() {
		h.Insecure = !f.tlsVerify
	} else {
		conf, err := f.config()
		if err != nil {
			return h, err
		}
		h.Insecure = f.insecure[host] || conf.Insecure(host)
	}
	if f.certDir != "" {
		h.CertDir = f.certDir
		return h, nil
	}
	dir, err := registry.FindCertDir(registry.DefaultCertDirs(), host)
	h.CertDir = dir
	return h, err
}

// checkPush refuses a destination registries.conf blocks. A push goes to the reference as
// given: no mirror, no location rewrite (as podman).
func (f *registryFlags) checkPush(ref imageref.Reference) error {
	conf, err := f.config()
	if err != nil {
		return err
	}
	return conf.PushTarget(ref)
}

// checkBlocked refuses a registry registries.conf blocks (fsck's re-fetch).
func (f *registryFlags) checkBlocked(ref imageref.Reference) error {
	conf, err := f.config()
	if err != nil {
		return err
	}
	if err := conf.Blocked(ref); err != nil {
		return fmt.Errorf("re-fetching from %s: %w", ref, err)
	}
	return nil
}

// chosenSource is where a pull reads from.
type chosenSource struct {
	src    source.Source
	client *registry.Client   // src's client
	ref    imageref.Reference // the source actually used (a mirror, a rewritten location)
	name   string             // what to store the image as when not what src names it ("": src's name)
}

// pullSource resolves what the user typed through registries.conf (short names, aliases,
// location rewrites, mirrors) and returns the first source whose manifest resolves, trying them
// in order as podman does. With a single source nothing is fetched here.
func (f *registryFlags) pullSource(ctx context.Context, arg string) (chosenSource, error) {
	conf, err := f.config()
	if err != nil {
		return chosenSource{}, err
	}
	sources, err := conf.PullSources(arg)
	if err != nil {
		return chosenSource{}, err
	}
	f.insecure = map[string]bool{}
	for _, s := range sources {
		f.insecure[s.Ref.Domain] = f.insecure[s.Ref.Domain] || s.Insecure
	}
	var failures []error
	for i, s := range sources {
		client, err := f.newClientFor(arg, s.Ref.Domain == s.Name.Domain)
		if err != nil {
			return chosenSource{}, err
		}
		slog.Debug("pull source", "try", i+1, "of", len(sources), "ref", s.Ref.String(), "mirror", s.Ref.Domain != s.Name.Domain, "insecure", s.Insecure)
		if len(sources) > 1 && s.Ref.Transport == imageref.Docker {
			if _, err := client.Resolve(ctx, s.Ref); err != nil {
				if ctx.Err() != nil {
					return chosenSource{}, err
				}
				failures = append(failures, fmt.Errorf("source %d of %d, %s: %w", i+1, len(sources), s.Ref, err))
				if i+1 < len(sources) {
					fmt.Fprintf(os.Stderr, "kura: %s: %v; trying the next source\n", s.Ref, err)
				}
				continue
			}
		}
		src, err := openSource(s.Ref, client)
		if err != nil {
			return chosenSource{}, err
		}
		slog.Debug("pulling from", "registry", s.Ref.Domain, "ref", s.Ref.String(), "mirror", s.Ref.Domain != s.Name.Domain)
		c := chosenSource{src: src, client: client, ref: s.Ref}
		if s.Ref != s.Name {
			c.name = storedName(s.Name)
		}
		return c, nil
	}
	return chosenSource{}, fmt.Errorf("pulling %s: no source answered: %w", arg, errors.Join(failures...))
}

// storedName is the name a registry image is stored under: REPOSITORY:TAG, or @DIGEST when
// the reference names no tag (the form pull uses).
func storedName(r imageref.Reference) string {
	if r.Tag != "" {
		return r.Repository().String() + ":" + r.Tag
	}
	return r.Repository().String() + "@" + r.Digest.String()
}
