package snapshotter

import (
	"os"
)

// Unmounter takes down per-layer mounts: layerstore.Layers (Mounts lists those in place,
// Unmount takes one down unless something still stacks on it).
type Unmounter interface {
	Mounts() ([]string, error)
	Unmount(dir string) error
}

// layerMount is the per-layer mount a snapshot is on: a remote-path snapshot's directory, or
// the target of a commit's link (snapshots/<n>/layer); "" for a snapshot on its own directory.
func (s *Service) layerMount(r *record) string {
	switch {
	case r.DiffID != "":
		dir, err := os.Readlink(r.Dir)
		if err != nil {
			return ""
		}
		return dir
	case r.Dir != "":
		return r.Dir
	}
	return ""
}

// mountsInUse is the set of layer mounts snapshots are on. Called with mu held.
func (s *Service) mountsInUse() map[string]bool {
	in := map[string]bool{}
	for _, r := range s.meta.Snapshots {
		if d := s.layerMount(r); d != "" {
			in[d] = true
		}
	}
	return in
}

// releaseMount unmounts dir if no snapshot is on it any more (two snapshots share a mount when
// their layers have the same DiffID). It does nothing while a remote-path Prepare is between
// its lookup and its record (its mount may be this one, not yet recorded). A failure is
// logged: Cleanup tries again. Called with mu held.
func (s *Service) releaseMount(dir string) {
	if dir == "" || s.unmounter == nil || s.lookups > 0 || s.mountsInUse()[dir] {
		return
	}
	s.unmount(dir)
}

func (s *Service) unmount(dir string) {
	if err := s.unmounter.Unmount(dir); err != nil {
		s.log.Warn("layer mount kept", "dir", dir, "err", err)
	}
}

// cleanupMounts unmounts the layer mounts no snapshot is on (see releaseMount). Called with
// mu held.
func (s *Service) cleanupMounts() {
	if s.unmounter == nil || s.lookups > 0 {
		return
	}
	dirs, err := s.unmounter.Mounts()
	if err != nil {
		s.log.Warn("listing layer mounts", "err", err)
		return
	}
	in := s.mountsInUse()
	for _, d := range dirs {
		if !in[d] {
			s.unmount(d)
		}
	}
}
