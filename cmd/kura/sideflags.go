package main

import (
	"github.com/spf13/cobra"
)

// sideFlags are the per-side registry options of skopeo copy (--src-creds, --dest-tls-verify,
// …). Each one given replaces, for its side only, the plain option of the same name, which stays
// the default for both sides.
type sideFlags struct {
	creds     string
	authfile  string
	tlsVerify bool
	certDir   string
	changed   func(name string) bool
}

// register adds --PREFIX-creds, --PREFIX-authfile, --PREFIX-tls-verify and --PREFIX-cert-dir;
// side names the side in the help ("source", "destination").
func (s *sideFlags) register(cmd *cobra.Command, prefix, side string) {
	fl := cmd.Flags()
	fl.StringVar(&s.creds, prefix+"-creds", "", "credentials USER[:PASSWORD] for the "+side+" registry (default: --creds)")
	fl.StringVar(&s.authfile, prefix+"-authfile", "", "auth file for the "+side+" registry (default: --authfile)")
	fl.BoolVar(&s.tlsVerify, prefix+"-tls-verify", true, "require HTTPS and verify certificates of the "+side+" registry (default: --tls-verify)")
	fl.StringVar(&s.certDir, prefix+"-cert-dir", "", "certificates directory for the "+side+" registry (default: --cert-dir)")
	s.changed = func(name string) bool { return fl.Changed(prefix + "-" + name) }
}

// apply returns base, the command's plain registry options, with this side's given options in
// their place.
func (s *sideFlags) apply(base *registryFlags) *registryFlags {
	f := *base
	if s.changed("creds") {
		f.creds = s.creds
	}
	if s.changed("authfile") {
		f.authfile = s.authfile
	}
	if s.changed("cert-dir") {
		f.certDir = s.certDir
	}
	if s.changed("tls-verify") {
		f.tlsVerify, f.tlsSet = s.tlsVerify, func() bool { return true }
	}
	return &f
}
