package main

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/internal/mountinfo"
	"github.com/kura-oci/kura/internal/testkit"
)

// TestLayerStoreServeUsage: bad flags are usage errors (exit 2) found before anything is
// mounted at PATH.
func TestLayerStoreServeUsage(t *testing.T) {
	work := t.TempDir()
	c := cli{t: t, bin: testkit.Kura(t)}
	mnt := filepath.Join(work, "als")
	for _, args := range [][]string{
		{"--diff", "tarball"},
		{"--link", "symlink"},
		{"--no-such-flag"},
	} {
		c.fails(errdefs.ExitUsage, "", append([]string{"--root", filepath.Join(work, "store"), "layer-store", "serve", mnt, "--state", filepath.Join(work, "state")}, args...)...)
	}
	c.fails(errdefs.ExitUsage, "", "--root", filepath.Join(work, "store"), "layer-store", "serve")
	entries, err := mountinfo.Read("self")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := mountinfo.Top(entries, mnt); ok {
		t.Errorf("a refused serve left a mount at %s", mnt)
	}
	if _, err := os.Stat(mnt); !os.IsNotExist(err) {
		t.Errorf("a refused serve made %s: %v", mnt, err)
	}
}
