package main

import (
	"github.com/kura-oci/kura/registry"
)

// hostTLS is podman's TLS rule for one registry host: an explicit --tls-verify decides for every
// registry; otherwise TLS is verified unless registries.conf marks the host insecure. --cert-dir
// replaces the certs.d lookup ($HOME/.config/containers/certs.d, /etc/containers/certs.d,
// /etc/docker/certs.d, each with a HOST[:PORT] directory).
func (f *registryFlags) hostTLS(host string) (registry.HostTLS, error) {
	h := registry.HostTLS{}
	if f.tlsSet != nil && f.tlsSet() {
		h.Insecure = !f.tlsVerify
	}
	if f.certDir != "" {
		h.CertDir = f.certDir
		return h, nil
	}
	dir, err := registry.FindCertDir(registry.DefaultCertDirs(), host)
	h.CertDir = dir
	return h, err
}
