package interop

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"testing"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/core/snapshots"
	"github.com/containerd/containerd/v2/core/snapshots/proxy"
	"github.com/containerd/containerd/v2/core/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/kura-oci/kura/internal/testkit"
	"github.com/kura-oci/kura/layerstore"
	"github.com/kura-oci/kura/snapshotter"
	"github.com/kura-oci/kura/store"
)

// TestSnapshotterSuite runs containerd's own snapshotter test suite against Kura's
// snapshotter, over gRPC through containerd's proxy client (what containerd uses for a proxy
// plugin): each test gets a fresh server on its own root. The suite is told the snapshotter is
// "overlayfs", which is what Kura's plain path is: the one expectation that name changes is
// that a directory of a lower layer cannot be renamed (EXDEV without overlayfs's redirect_dir),
// an overlayfs limit containerd's own overlayfs and EROFS snapshotters share. Every commit
// moves into a store of the test's own and is served from a per-layer composefs mount, as
// kura snapshotter does (and Remove and Cleanup take down the mounts no snapshot is on): what
// the suite reads back of a committed snapshot comes from Kura's store.
func TestSnapshotterSuite(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Skip(t, "the suite mounts overlayfs: needs root")
	}
	testsuite.SnapshotterSuite(t, "overlayfs", func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		st, err := store.Open(filepath.Join(root, "store"), store.WithoutSync())
		if err != nil {
			return nil, nil, err
		}
		layers := filepath.Join(root, "layers")
		ls, err := layerstore.New(st, nil, layerstore.Options{State: layers})
		if err != nil {
			return nil, nil, err
		}
		svc, err := snapshotter.New(snapshotter.Options{Root: filepath.Join(root, "kura"), Ingester: ls, Unmounter: ls})
		if err != nil {
			return nil, nil, err
		}
		lis, err := net.Listen("unix", filepath.Join(root, "kura.sock"))
		if err != nil {
			svc.Close()
			return nil, nil, err
		}
		sctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- snapshotter.ServeListener(sctx, lis, svc) }()
		conn, err := grpc.NewClient("unix://"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			cancel()
			svc.Close()
			return nil, nil, err
		}
		sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), "kura")
		return sn, func() error {
			conn.Close()
			cancel()
			err := <-done
			svc.Close()
			unmountUnder(t, layers) // the committed snapshots' per-layer mounts
			return err
		}, nil
	})
}
