// Package testkit holds what tests share beyond vectors: the switch that turns a skipped test into
// a failed one (KURA_TEST_STRICT=1, set by make test and .ci/run), the kura module's root, the
// kura binary built once per test binary, and running a command as an unprivileged user. Only
// tests import it.
//
// Its sibling packages hold the rest of the shared test kit, one idea each: tartest (layer tars
// from a compact description), teststore (scratch stores and images recorded in them), imagetest
// (image configs and manifests, zstd:chunked images), treetest (tree snapshots); the in-process
// registry and the fault transports are in registry/registrytest.
package testkit

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// StrictEnv names the environment switch: when it is "1", Skip fails the test instead.
const StrictEnv = "KURA_TEST_STRICT"

// Strict reports whether skipping is a failure in this run.
func Strict() bool { return os.Getenv(StrictEnv) == "1" }

// Skip skips the test with the reason, or, under KURA_TEST_STRICT=1, fails it with the reason:
// CI must not report ok for a test that did not run. Use it for every missing tool, privilege
// or machine feature.
func Skip(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if Strict() {
		t.Fatalf("cannot run (%s=1 makes a skip a failure): %s", StrictEnv, msg)
	}
	t.Skip(msg)
}

// ModuleRoot returns the root directory of the github.com/kura-oci/kura module, also from the
// interop and bench modules nested in it.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	root, err := FindModuleRoot()
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// FindModuleRoot is ModuleRoot without a testing.TB.
func FindModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/kura-oci/kura\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod of github.com/kura-oci/kura above the working directory")
		}
		dir = parent
	}
}
