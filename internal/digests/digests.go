// Package digests checks sha256 digests quickly (go-digest validates with a regular expression,
// about a microsecond a call; a pull of a layer validates tens of thousands) and shortens them
// for display.
package digests

import (
	"strings"

	"github.com/opencontainers/go-digest"
)

// IsSHA256 says whether d is "sha256:" and 64 lowercase hex digits, the only form in which
// go-digest accepts a sha256 digest.
func IsSHA256(d digest.Digest) bool {
	s := string(d)
	if len(s) != len("sha256:")+64 || !strings.HasPrefix(s, "sha256:") {
		return false
	}
	for i := len("sha256:"); i < len(s); i++ {
		if c := s[i]; !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return false
		}
	}
	return true
}

// ParseSHA256 is digest.Parse, fast for sha256 digests.
func ParseSHA256(s string) (digest.Digest, error) {
	if IsSHA256(digest.Digest(s)) {
		return digest.Digest(s), nil
	}
	return digest.Parse(s)
}

// Short is the first 12 hex digits of a digest, as podman and skopeo show layers.
func Short(d digest.Digest) string {
	if e := d.Encoded(); len(e) > 12 {
		return e[:12]
	}
	return d.String()
}
