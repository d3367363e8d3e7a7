package snapshotter

import (
	"context"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"time"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/kura-oci/kura/errdefs"
)

// Prepare makes an active snapshot, or, for a layer the remote path can serve, commits the
// target snapshot itself and answers AlreadyExists (see prepareRemote).
func (s *Service) Prepare(ctx context.Context, req *snapshots.PrepareSnapshotRequest) (*snapshots.PrepareSnapshotResponse, error) {
	if done, err := s.prepareRemote(ctx, req.Key, req.Parent, req.Labels); done {
		return nil, grpcError(err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.create(KindActive, req.Key, req.Parent, req.Labels); err != nil {
		return nil, grpcError(err)
	}
	m, err := s.mounts(req.Key)
	if err != nil {
		return nil, grpcError(err)
	}
	s.log.Debug("prepared", "key", req.Key, "parent", req.Parent)
	return &snapshots.PrepareSnapshotResponse{Mounts: m}, nil
}

// View makes a read-only snapshot of parent.
func (s *Service) View(ctx context.Context, req *snapshots.ViewSnapshotRequest) (*snapshots.ViewSnapshotResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, err := s.create(KindView, req.Key, req.Parent, req.Labels); err != nil {
		return nil, grpcError(err)
	}
	m, err := s.mounts(req.Key)
	if err != nil {
		return nil, grpcError(err)
	}
	return &snapshots.ViewSnapshotResponse{Mounts: m}, nil
}

// Mounts returns the mount plan of an active or view snapshot again.
func (s *Service) Mounts(ctx context.Context, req *snapshots.MountsRequest) (*snapshots.MountsResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	m, err := s.mounts(req.Key)
	if err != nil {
		return nil, grpcError(err)
	}
	return &snapshots.MountsResponse{Mounts: m}, nil
}

// Commit turns the active snapshot key into the committed snapshot name; its usage is measured
// once, here. With an Ingester its files move into Kura's store and it is served from there
// (intoStore); otherwise, or if that fails, its directory stays where it is (it becomes a
// lower of its children).
func (s *Service) Commit(ctx context.Context, req *snapshots.CommitSnapshotRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.meta.Snapshots[req.Key]
	switch {
	case !ok:
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Key, errdefs.ErrNotFound))
	case r.Kind != KindActive:
		return nil, grpcError(fmt.Errorf("snapshotter: commit of %q, a %s snapshot: %w", req.Key, r.Kind, errFailedPrecondition))
	}
	if _, ok := s.meta.Snapshots[req.Name]; ok {
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Name, errdefs.ErrAlreadyExists))
	}
	size, inodes, err := diskUsage(s.fsDir(r))
	if err != nil {
		return nil, grpcError(err)
	}
	c := r.clone()
	// A commit makes a new snapshot (containerd's suite checks Created == Updated after it).
	c.Kind, c.Size, c.Inodes = KindCommitted, size, inodes
	c.Created = time.Now().UTC()
	c.Updated = c.Created
	if len(req.Labels) > 0 {
		c.Labels = maps.Clone(req.Labels)
	}
	s.intoStore(ctx, req.Key, c)
	if c.DiffID != "" && s.objects != nil {
		if err := s.charge(ctx, req.Name, c, c.DiffID); err != nil {
			s.log.Warn("committed layer's usage not charged; measured as a directory", "key", req.Key, "err", err)
		}
	}
	delete(s.meta.Snapshots, req.Key)
	s.meta.Snapshots[req.Name] = c
	if err := s.meta.save(s.root); err != nil {
		delete(s.meta.Snapshots, req.Name)
		s.meta.Snapshots[req.Key] = r
		s.uncharge(req.Name)
		return nil, grpcError(err)
	}
	if c.DiffID != "" {
		s.dropUpper(c) // only now: the saved record names the mount a restart restores
	} else {
		os.RemoveAll(filepath.Join(s.dir(c), "work")) // a committed snapshot is only ever a lower
	}
	s.log.Debug("committed", "key", req.Key, "name", req.Name, "size", size)
	return &emptypb.Empty{}, nil
}

// intoStore moves the committed snapshot c into the store (ingest) and points c at the mount
// that serves it, through a symlink snapshots/<id>/layer: a child's overlay names its lowers
// by that short path (containerd shortens lowerdir options to paths relative to their common
// directory; the mount points' full paths would not fit a 128-layer image in the one page of
// mount options). A failure leaves c on its directory. Called with mu held.
func (s *Service) intoStore(ctx context.Context, key string, c *record) {
	if s.ingester == nil {
		return
	}
	s.log.Info("ingesting a commit into the store", "key", key)
	dir, err := s.ingest(ctx, c)
	if err != nil {
		c.Image, c.DiffID = "", ""
		s.log.Warn("commit kept as a directory: ingest into the store failed", "key", key, "err", err)
		return
	}
	link := filepath.Join(s.dir(c), "layer")
	if err := symlink(dir, link); err != nil {
		c.Image, c.DiffID = "", ""
		s.log.Warn("commit kept as a directory: linking its layer", "key", key, "err", err)
		return
	}
	c.Dir = link
	s.log.Info("commit ingested into the store", "key", key, "diffID", c.DiffID, "dir", dir)
}

// Remove forgets a snapshot no other snapshot is built on, deletes its directory, and takes
// down the layer mount it was on if no other snapshot is on it (releaseMount).
func (s *Service) Remove(ctx context.Context, req *snapshots.RemoveSnapshotRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.meta.Snapshots[req.Key]
	if !ok {
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Key, errdefs.ErrNotFound))
	}
	if s.meta.children(req.Key) {
		return nil, grpcError(fmt.Errorf("snapshotter: cannot remove snapshot %q: it has children: %w", req.Key, errFailedPrecondition))
	}
	delete(s.meta.Snapshots, req.Key)
	if err := s.meta.save(s.root); err != nil {
		s.meta.Snapshots[req.Key] = r
		return nil, grpcError(err)
	}
	s.uncharge(req.Key)
	mnt := s.layerMount(r)                         // before the directory goes: a commit's is a link to its mount
	if err := os.RemoveAll(s.dir(r)); err != nil { // Cleanup retries what is left
		s.log.Warn("removing a snapshot's directory", "key", req.Key, "err", err)
	}
	if r.Labels[LabelLazy] != "" {
		s.releasePending(r.Dir)
	} else {
		s.releaseMount(mnt)
	}
	return &emptypb.Empty{}, nil
}

// Stat returns a snapshot's info.
func (s *Service) Stat(ctx context.Context, req *snapshots.StatSnapshotRequest) (*snapshots.StatSnapshotResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.meta.Snapshots[req.Key]
	if !ok {
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Key, errdefs.ErrNotFound))
	}
	return &snapshots.StatSnapshotResponse{Info: info(req.Key, r)}, nil
}

// Update changes a snapshot's labels: all of them without a field mask, else the fields the
// mask names ("labels", "labels.KEY"); no other field can change.
func (s *Service) Update(ctx context.Context, req *snapshots.UpdateSnapshotRequest) (*snapshots.UpdateSnapshotResponse, error) {
	if req.Info == nil {
		return nil, grpcError(fmt.Errorf("snapshotter: update without info: %w", errdefs.ErrInvalid))
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.meta.Snapshots[req.Info.Name]
	if !ok {
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Info.Name, errdefs.ErrNotFound))
	}
	labels, err := updateLabels(r.Labels, req.Info.Labels, req.UpdateMask.GetPaths())
	if err != nil {
		return nil, grpcError(err)
	}
	old := r.clone()
	r.Labels, r.Updated = labels, time.Now().UTC()
	if err := s.meta.save(s.root); err != nil {
		s.meta.Snapshots[req.Info.Name] = old
		return nil, grpcError(err)
	}
	return &snapshots.UpdateSnapshotResponse{Info: info(req.Info.Name, r)}, nil
}

func updateLabels(have, in map[string]string, paths []string) (map[string]string, error) {
	if len(paths) == 0 {
		return maps.Clone(in), nil
	}
	out := maps.Clone(have)
	if out == nil {
		out = map[string]string{}
	}
	for _, p := range paths {
		switch k, ok := strings.CutPrefix(p, "labels."); {
		case p == "labels":
			out = maps.Clone(in)
		case ok && in[k] != "":
			out[k] = in[k]
		case ok:
			delete(out, k)
		default:
			return nil, fmt.Errorf("snapshotter: cannot update field %q: %w", p, errdefs.ErrInvalid)
		}
	}
	return out, nil
}

// List (containerd's Walk) sends the snapshots any filter matches (see filter): containerd's
// metadata store walks the snapshotter for garbage collection (no filter) and to find the
// target of a remote Prepare (by label and parent).
func (s *Service) List(req *snapshots.ListSnapshotsRequest, srv snapshots.Snapshots_ListServer) error {
	fs, err := parseFilters(req.Filters)
	if err != nil {
		return grpcError(err)
	}
	s.mu.Lock()
	var infos []*snapshots.Info
	for k, r := range s.meta.Snapshots {
		if matchAny(fs, k, r) {
			infos = append(infos, info(k, r))
		}
	}
	s.mu.Unlock()
	for len(infos) > 0 {
		n := min(len(infos), 100)
		if err := srv.Send(&snapshots.ListSnapshotsResponse{Info: infos[:n]}); err != nil {
			return err
		}
		infos = infos[n:]
	}
	return nil
}

// Usage is what a snapshot holds on disk: measured now for an active one, at commit for a
// committed one (its upper directory) and for a remote-path one (its layer's files, read
// through the mount Kura serves them from; containerd's CRI plugin sums these figures into
// ImageFsInfo, which is what the kubelet sees of the image file system).
func (s *Service) Usage(ctx context.Context, req *snapshots.UsageRequest) (*snapshots.UsageResponse, error) {
	s.mu.Lock()
	r, ok := s.meta.Snapshots[req.Key]
	var dir string
	if ok {
		r = r.clone()
		dir = s.fsDir(r)
	}
	s.mu.Unlock()
	if !ok {
		return nil, grpcError(fmt.Errorf("snapshotter: snapshot %q: %w", req.Key, errdefs.ErrNotFound))
	}
	if r.Kind == KindCommitted || r.Dir != "" {
		return &snapshots.UsageResponse{Size: r.Size, Inodes: r.Inodes}, nil
	}
	size, inodes, err := diskUsage(dir)
	if err != nil {
		return nil, grpcError(err)
	}
	return &snapshots.UsageResponse{Size: size, Inodes: inodes}, nil
}

func info(name string, r *record) *snapshots.Info {
	kind := map[Kind]snapshots.Kind{KindView: snapshots.Kind_VIEW, KindActive: snapshots.Kind_ACTIVE, KindCommitted: snapshots.Kind_COMMITTED}[r.Kind]
	return &snapshots.Info{Name: name, Parent: r.Parent, Kind: kind, Labels: maps.Clone(r.Labels),
		CreatedAt: timestamppb.New(r.Created), UpdatedAt: timestamppb.New(r.Updated)}
}
