package snapshotter

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"syscall"

	"google.golang.org/protobuf/types/known/emptypb"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
)

// diskUsage counts the blocks and inodes under dir, each inode once (hardlinks), as
// containerd's fs.DiskUsage does.
func diskUsage(dir string) (size, inodes int64, err error) {
	seen := map[uint64]bool{}
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok || seen[st.Ino] {
			return nil
		}
		seen[st.Ino] = true
		inodes++
		size += st.Blocks * 512
		return nil
	})
	if err != nil {
		return 0, 0, fmt.Errorf("snapshotter: usage of %s: %w", dir, err)
	}
	return size, inodes, nil
}

// Cleanup deletes the directories no snapshot names (what a Remove could not delete, or a
// crash between a directory's creation and its record) and takes down the layer mounts no
// snapshot is on (a Remove's unmount that failed, or a server killed before it).
func (s *Service) Cleanup(ctx context.Context, req *snapshots.CleanupRequest) (*emptypb.Empty, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cleanupMounts()
	keep := map[string]bool{}
	for _, r := range s.meta.Snapshots {
		keep[strconv.FormatInt(r.ID, 10)] = true
	}
	entries, err := os.ReadDir(filepath.Join(s.root, dirSnapshots))
	if err != nil {
		return nil, grpcError(fmt.Errorf("snapshotter: %w", err))
	}
	for _, e := range entries {
		if !keep[e.Name()] {
			if err := os.RemoveAll(filepath.Join(s.root, dirSnapshots, e.Name())); err != nil {
				return nil, grpcError(fmt.Errorf("snapshotter: cleanup: %w", err))
			}
			s.log.Info("cleaned up", "dir", e.Name())
		}
	}
	return &emptypb.Empty{}, nil
}
