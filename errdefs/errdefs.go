// Package errdefs defines the few error classes every Kura package uses, so that callers can
// test them with errors.Is and the CLI can map them to exit codes.
package errdefs

import (
	"errors"
	"io/fs"
)

var (
	// ErrNotFound: the named thing (object, layer, image, ref, blob) does not exist.
	ErrNotFound = errors.New("not found")
	// ErrAlreadyExists: the thing exists already; ingests treat it as success.
	ErrAlreadyExists = errors.New("already exists")
	// ErrInvalid: input is malformed or hostile (bad JSON, traversal, size over a bound, ...).
	ErrInvalid = errors.New("invalid input")
	// ErrDigestMismatch: content does not match the digest (or size) it was expected to have.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrUnsupported: a valid request that this build, kernel or server cannot do.
	ErrUnsupported = errors.New("unsupported")
	// ErrPermission: the operation needs privileges the process lacks.
	ErrPermission = errors.New("permission denied")
	// ErrNeedFull: a layer cannot be pulled partially, or not exactly, and a full pull of the
	// same blob is safe (package pull's fallback rule). An error wrapping it must not also wrap
	// ErrInvalid or ErrDigestMismatch: hostile input fails, it does not fall back. It escapes to
	// the CLI only if a bug lets it, as "unsupported".
	ErrNeedFull = errors.New("the layer must be pulled whole")
	// ErrInUse: the thing is in use (an image mounted or checked out) and was left alone.
	ErrInUse = errors.New("in use")
)

// Exit codes of the kura binary. Scripts can rely on them; README.md lists them and
// cmd/kura's tests check every one against the binary.
const (
	ExitOK          = 0
	ExitFailure     = 1 // anything not classified below
	ExitUsage       = 2 // bad command line
	ExitNotFound    = 3
	ExitInvalid     = 4 // hostile or malformed input
	ExitVerify      = 5 // digest or size mismatch
	ExitUnsupported = 6
	ExitInUse       = 8  // an image in use was not removed
	ExitPermission  = 77 // as sysexits EX_NOPERM
	// A command stopped by SIGINT or SIGTERM exits 128 + the signal's number, as a shell
	// reports it: these two are the ones Kura handles (cancelling the work in progress).
	ExitSIGINT  = 130
	ExitSIGTERM = 143
)

// ExitCode maps an error to the exit code the CLI returns.
func ExitCode(err error) int {
	switch {
	case err == nil:
		return ExitOK
	case errors.Is(err, ErrDigestMismatch):
		return ExitVerify
	case errors.Is(err, ErrInvalid):
		return ExitInvalid
	case errors.Is(err, ErrNotFound):
		return ExitNotFound
	case errors.Is(err, ErrUnsupported), errors.Is(err, ErrNeedFull):
		return ExitUnsupported
	case errors.Is(err, ErrPermission), errors.Is(err, fs.ErrPermission):
		// fs.ErrPermission: EACCES or EPERM from the kernel, e.g. a store directory the user
		// cannot write.
		return ExitPermission
	case errors.Is(err, ErrInUse):
		return ExitInUse
	}
	return ExitFailure
}
