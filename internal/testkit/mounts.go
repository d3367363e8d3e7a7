package testkit

import (
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/kura-oci/kura/internal/mountinfo"
)

// DetachMountsUnder detaches, once the test is over, every mount left below dir, the last made
// first, so that the test's temporary directories can go: a layer store's per-layer mounts and
// the shared EROFS mounts beside them outlive it by design. Register it after the t.TempDir that
// holds dir (cleanups run last first).
func DetachMountsUnder(t testing.TB, dir string) {
	t.Cleanup(func() {
		entries, err := mountinfo.Read("self")
		if err != nil {
			t.Error(err)
			return
		}
		for i := len(entries) - 1; i >= 0; i-- {
			if strings.HasPrefix(entries[i].Point, dir+"/") {
				unix.Unmount(entries[i].Point, unix.MNT_DETACH)
			}
		}
	})
}
