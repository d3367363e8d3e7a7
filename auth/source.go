package auth

import "fmt"

// SourceKind says where a credential came from.
type SourceKind int

const (
	// FromNone: no credential was found; the request went anonymous.
	FromNone SourceKind = iota
	// FromCreds: the --creds option.
	FromCreds
	// FromFile: an "auths" entry of an auth file (Name is its path).
	FromFile
	// FromHelper: a docker-credential-NAME program (Name is NAME), from "credHelpers" or
	// "credsStore".
	FromHelper
)

// Source is where a credential came from, so that a refusal can say which one to fix.
type Source struct {
	Kind SourceKind
	Name string
}

// String is "none", "--creds", "auth file PATH" or "credential helper NAME".
func (s Source) String() string {
	switch s.Kind {
	case FromCreds:
		return "--creds"
	case FromFile:
		return "auth file " + s.Name
	case FromHelper:
		return "credential helper " + s.Name
	}
	return "none"
}

// Used returns the source of the credential last resolved for each registry host.
func (k *Keychain) Used() map[string]Source {
	k.mu.Lock()
	defer k.mu.Unlock()
	out := make(map[string]Source, len(k.used))
	for h, s := range k.used {
		out[h] = s
	}
	return out
}

// Error is a registry refusing the credentials sent (or their absence). It names the source, the
// one thing a user needs to know to fix it, and wraps the registry's answer (errdefs.ErrPermission).
type Error struct {
	Host   string
	Source Source
	Err    error
}

func (e *Error) Error() string {
	from := "credentials from " + e.Source.String()
	if e.Source.Kind == FromNone {
		from = "credentials: none"
	}
	return fmt.Sprintf("authentication failed for %s (%s): %v", e.Host, from, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }
