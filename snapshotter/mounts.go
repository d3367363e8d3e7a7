package snapshotter

import (
	"strings"

	"github.com/containerd/containerd/api/types"
)

// mountPlan is what containerd mounts for a snapshot: data, made without root and checked by
// tests, performed by containerd (or runc), as containerd's own overlay snapshotter does.
//
// lowers are the committed ancestors' file systems, nearest first. An active snapshot without
// parents is its own directory bound read-write; a view of one parent is that parent bound
// read-only; otherwise overlayfs, with an upper and work directory for an active snapshot.
func mountPlan(kind Kind, fs, work string, lowers []string) []*types.Mount {
	if len(lowers) == 0 {
		ro := "rw"
		if kind == KindView {
			ro = "ro"
		}
		return []*types.Mount{{Type: "bind", Source: fs, Options: []string{ro, "rbind"}}}
	}
	if kind == KindView && len(lowers) == 1 {
		return []*types.Mount{{Type: "bind", Source: lowers[0], Options: []string{"ro", "rbind"}}}
	}
	var opts []string
	if kind == KindActive {
		opts = append(opts, "workdir="+work, "upperdir="+fs)
	}
	// A view of two or more parents is overlayfs with lowers only: read-only by construction.
	opts = append(opts, "lowerdir="+strings.Join(lowers, ":"))
	return []*types.Mount{{Type: "overlay", Source: "overlay", Options: opts}}
}
