package snapshotter

import (
	"context"
	"fmt"
	"maps"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/errdefs"
	"github.com/kura-oci/kura/layerstore"
)

// The labels containerd's CRI plugin puts on a layer's Prepare (its snapshot annotations,
// disable_snapshot_annotations = false), and the one containerd's metadata store always passes:
// the name the layer's snapshot will be committed under. These are the labels
// stargz-snapshotter's remote path reads.
const (
	LabelTargetRef   = "containerd.io/snapshot.ref"
	LabelImageRef    = "containerd.io/snapshot/cri.image-ref"
	LabelLayerDigest = "containerd.io/snapshot/cri.layer-digest"
	// LabelRemote marks a snapshot the remote path committed.
	LabelRemote = "containerd.io/snapshot/kura.remote"
)

// Remote serves one layer of an image from Kura's store: layerstore.Layers, the core shared
// with the podman layer store (pull by reference into the store, verified; a per-layer
// composefs mount or checkout; a use that keeps it from gc).
type Remote interface {
	Lookup(ctx context.Context, ref string, dgst digest.Digest) (*layerstore.Layer, error)
}

// prepareRemote is the remote path: when a Prepare names an image and a layer, Kura pulls the
// layer, commits the target snapshot on it, and answers AlreadyExists, which containerd takes
// as "the layer is unpacked, skip its download" (it then Stats the target). done is false when
// the request is not for the remote path, or the layer could not be served: containerd is then
// given an ordinary active snapshot and downloads the layer itself.
func (s *Service) prepareRemote(ctx context.Context, key, parent string, labels map[string]string) (done bool, err error) {
	target, ref, layer := labels[LabelTargetRef], labels[LabelImageRef], labels[LabelLayerDigest]
	if s.remote == nil || target == "" || ref == "" || layer == "" {
		return false, nil
	}
	dgst, err := digest.Parse(layer)
	if err != nil {
		return false, nil
	}
	if s.lazy != nil { // a pull completing meanwhile moves this snapshot once it is recorded
		defer s.lazyGate.enter()()
	}
	s.mu.Lock()
	_, exists := s.meta.Snapshots[target]
	if !exists {
		s.lookups++ // no layer mount is taken down until this one is recorded
		defer func() { s.mu.Lock(); s.lookups--; s.mu.Unlock() }()
	}
	s.mu.Unlock()
	if exists {
		return true, fmt.Errorf("snapshotter: target %q: %w", target, errdefs.ErrAlreadyExists)
	}
	l, pending, err := s.lookupLayer(ctx, ref, dgst)
	if err != nil {
		s.log.Warn("remote path failed; containerd will download the layer", "ref", ref, "layer", dgst, "err", err)
		return false, nil
	}
	var size, inodes int64
	if pending {
		labels = maps.Clone(labels)
		labels[LabelLazy] = "pending"
	} else if s.objects == nil {
		// Measured once, here, as a plain commit is: the kubelet's image file-system stats
		// (ImageFsInfo) are the sum of the snapshots' Usage.
		if size, inodes, err = diskUsage(l.Diff); err != nil {
			s.log.Warn("remote layer's usage not measured", "dir", l.Diff, "err", err)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.commitRemote(ctx, target, parent, labels, l, size, inodes); err != nil {
		return true, err
	}
	s.log.Info("layer served from the store", "ref", ref, "layer", dgst, "snapshot", target, "dir", l.Diff)
	return true, fmt.Errorf("snapshotter: target %q: %w", target, errdefs.ErrAlreadyExists)
}

// commitRemote records the committed snapshot target on the served layer ly, whose Usage is
// its charge (with Objects) or else size bytes in inodes inodes. Called with mu held.
func (s *Service) commitRemote(ctx context.Context, target, parent string, labels map[string]string, ly *layerstore.Layer, size, inodes int64) error {
	if _, ok := s.meta.Snapshots[target]; ok {
		return nil // made meanwhile by a concurrent Prepare of the same layer
	}
	if p, ok := s.meta.Snapshots[parent]; parent != "" && (!ok || p.Kind != KindCommitted) {
		return fmt.Errorf("snapshotter: parent %q of %q is not committed: %w", parent, target, errdefs.ErrNotFound)
	}
	now := time.Now().UTC()
	l := maps.Clone(labels)
	l[LabelRemote] = "true"
	s.meta.Snapshots[target] = &record{ID: s.meta.NextID, Kind: KindCommitted, Parent: parent, Labels: l,
		Created: now, Updated: now, Dir: ly.Diff, Layer: ly.DiffID, Size: size, Inodes: inodes}
	r := s.meta.Snapshots[target]
	s.meta.NextID++
	if s.objects != nil && l[LabelLazy] == "" { // a pending layer is charged when complete
		if err := s.charge(ctx, target, r, ly.DiffID); err != nil {
			s.log.Warn("remote layer's usage not charged", "layer", ly.DiffID, "err", err)
		}
	}
	if err := s.meta.save(s.root); err != nil {
		delete(s.meta.Snapshots, target)
		s.uncharge(target)
		return err
	}
	return nil
}

// Revive makes the layers of the remote path's snapshots present again: their per-layer
// mounts do not survive a reboot, and a snapshot whose directory is gone would mount as an
// empty lower. Each is looked up again by the image reference and layer digest of its labels
// (the layer store's core serves it from the store, pulling only what is missing). A layer that
// cannot be served is logged and left: containers on it fail to start rather than run wrong.
//
// The snapshots plain-path commits moved into the store are mounted again too (reviveIngested),
// and those on layers of pending lazy pulls (reviveLazy, which resumes the pulls).
func (s *Service) Revive(ctx context.Context) {
	s.reviveIngested(ctx)
	s.reviveLazy(ctx)
	if s.remote == nil {
		return
	}
	s.mu.Lock()
	todo := map[string]*record{}
	for k, r := range s.meta.Snapshots {
		if r.Labels[LabelRemote] == "true" && r.Labels[LabelLazy] == "" {
			todo[k] = r.clone()
		}
	}
	s.mu.Unlock()
	for k, r := range todo {
		if err := s.reviveRemote(ctx, r); err != nil {
			s.log.Error("remote snapshot not revived", "snapshot", k, "err", err)
			continue
		}
		s.log.Info("remote snapshot revived", "snapshot", k, "dir", r.Dir)
	}
}

// reviveRemote mounts a remote-path snapshot's layer again: from the store when it still holds
// the layer (no registry needed: a node restarted offline), else by a lookup, which pulls.
func (s *Service) reviveRemote(ctx context.Context, r *record) error {
	if s.ingester != nil && r.Layer != "" {
		dir, err := s.ingester.MountLayer(ctx, "", r.Layer)
		if err == nil && dir == r.Dir {
			return nil
		}
		s.log.Info("remote snapshot's layer not mounted from the store; looking it up", "dir", r.Dir, "err", err)
	}
	dgst, err := digest.Parse(r.Labels[LabelLayerDigest])
	if err != nil {
		return err
	}
	l, err := s.remote.Lookup(ctx, r.Labels[LabelImageRef], dgst)
	if err == nil && l.Diff != r.Dir {
		err = fmt.Errorf("served at %s, recorded at %s: %w", l.Diff, r.Dir, errdefs.ErrInvalid)
	}
	return err
}
