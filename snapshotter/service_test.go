package snapshotter

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/fieldmaskpb"

	"github.com/kura-oci/kura/errdefs"
)

// serve runs a Service on a unix socket, as kura snapshotter does, and returns a client and
// a function that stops the server (also called at the test's end).
func serve(t *testing.T, root string) (snapshots.SnapshotsClient, func()) {
	t.Helper()
	svc, err := New(Options{Root: root})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "s.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- ServeListener(ctx, lis, svc) }()
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	stop := func() {
		once.Do(func() {
			conn.Close()
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
			svc.Close()
		})
	}
	t.Cleanup(stop)
	return snapshots.NewSnapshotsClient(conn), stop
}

func wantCode(t *testing.T, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want %v", err, code)
	}
}

// TestLifecycle: the calls containerd makes to unpack two layers and run a container, with
// the mount plans they return, the state errors containerd relies on, and metadata surviving
// a new server on the same root.
func TestLifecycle(t *testing.T) {
	root := t.TempDir()
	c, stop := serve(t, root)
	ctx := context.Background()
	p, err := c.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "extract-1"})
	if err != nil {
		t.Fatal(err)
	}
	fs1 := filepath.Join(root, "snapshots", "1", "fs")
	if m := p.Mounts; len(m) != 1 || m[0].Type != "bind" || m[0].Source != fs1 || !slices.Equal(m[0].Options, []string{"rw", "rbind"}) {
		t.Fatalf("first layer's mounts: %v", m)
	}
	if err := os.WriteFile(filepath.Join(fs1, "a"), make([]byte, 8192), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "extract-1"})
	wantCode(t, err, codes.AlreadyExists)
	_, err = c.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "x", Parent: "extract-1"})
	wantCode(t, err, codes.FailedPrecondition) // parent not committed
	_, err = c.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "x", Parent: "nope"})
	wantCode(t, err, codes.NotFound)
	if _, err := c.Commit(ctx, &snapshots.CommitSnapshotRequest{Key: "extract-1", Name: "L1"}); err != nil {
		t.Fatal(err)
	}
	u, err := c.Usage(ctx, &snapshots.UsageRequest{Key: "L1"})
	if err != nil || u.Size < 8192 || u.Inodes != 2 {
		t.Fatalf("usage of L1: %v %v, want ≥ 8192 bytes, 2 inodes", u, err)
	}
	checkChild(t, c, root)
	if _, err := New(Options{Root: root}); !errors.Is(err, errdefs.ErrInUse) {
		t.Fatalf("a second server on a root in use: %v, want ErrInUse", err)
	}
	stop()
	checkRemoveAndCleanup(t, root)
}

// checkChild prepares a container's snapshot on L1 and a view, and checks their mount plans.
func checkChild(t *testing.T, c snapshots.SnapshotsClient, root string) {
	t.Helper()
	ctx := context.Background()
	p, err := c.Prepare(ctx, &snapshots.PrepareSnapshotRequest{Key: "ctr", Parent: "L1"})
	if err != nil {
		t.Fatal(err)
	}
	d2 := filepath.Join(root, "snapshots", "2")
	want := []string{"workdir=" + d2 + "/work", "upperdir=" + d2 + "/fs", "lowerdir=" + root + "/snapshots/1/fs"}
	if m := p.Mounts; len(m) != 1 || m[0].Type != "overlay" || !slices.Equal(m[0].Options, want) {
		t.Fatalf("container's mounts: %v, want overlay %v", m, want)
	}
	v, err := c.View(ctx, &snapshots.ViewSnapshotRequest{Key: "view", Parent: "L1"})
	if err != nil {
		t.Fatal(err)
	}
	if m := v.Mounts; len(m) != 1 || m[0].Type != "bind" || !slices.Contains(m[0].Options, "ro") {
		t.Fatalf("view's mounts: %v", m)
	}
	_, err = c.Commit(ctx, &snapshots.CommitSnapshotRequest{Key: "view", Name: "V"})
	wantCode(t, err, codes.FailedPrecondition)
	up, err := c.Update(ctx, &snapshots.UpdateSnapshotRequest{Info: &snapshots.Info{Name: "L1", Labels: map[string]string{"a": "1", "b": "2"}},
		UpdateMask: &fieldmaskpb.FieldMask{Paths: []string{"labels.a"}}})
	if err != nil || len(up.Info.Labels) != 1 || up.Info.Labels["a"] != "1" {
		t.Fatalf("update of labels.a: %v %v", up, err)
	}
}

// checkRemoveAndCleanup: a new server on the root knows every snapshot; a parent cannot go
// before its children; Remove deletes directories and Cleanup what no snapshot names.
func checkRemoveAndCleanup(t *testing.T, root string) {
	t.Helper()
	ctx := context.Background()
	c2, _ := serve(t, root) // a restarted server reads the metadata file
	_, err := c2.Remove(ctx, &snapshots.RemoveSnapshotRequest{Key: "L1"})
	wantCode(t, err, codes.FailedPrecondition)
	if got := list(t, c2, `labels."a"==1,parent==""`); !slices.Equal(got, []string{"L1"}) {
		t.Fatalf("list by label and parent: %v, want [L1]", got)
	}
	_, err = c2.List(ctx, &snapshots.ListSnapshotsRequest{Filters: []string{"name~=L"}})
	if err == nil {
		_, err = recvAll(c2, []string{"name~=L"})
	}
	wantCode(t, err, codes.Unimplemented)
	for _, k := range []string{"ctr", "view", "L1"} {
		if _, err := c2.Remove(ctx, &snapshots.RemoveSnapshotRequest{Key: k}); err != nil {
			t.Fatalf("remove %s: %v", k, err)
		}
	}
	if err := os.MkdirAll(filepath.Join(root, "snapshots", "99", "fs"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Cleanup(ctx, &snapshots.CleanupRequest{}); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(root, "snapshots")); len(left) != 0 || len(list(t, c2)) != 0 {
		t.Fatalf("left after Remove and Cleanup: %v", left)
	}
}

func list(t *testing.T, c snapshots.SnapshotsClient, filters ...string) []string {
	t.Helper()
	names, err := recvAll(c, filters)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	return names
}

func recvAll(c snapshots.SnapshotsClient, filters []string) ([]string, error) {
	st, err := c.List(context.Background(), &snapshots.ListSnapshotsRequest{Filters: filters})
	if err != nil {
		return nil, err
	}
	var names []string
	for {
		r, err := st.Recv()
		if errors.Is(err, io.EOF) {
			return names, nil
		}
		if err != nil {
			return nil, err
		}
		for _, i := range r.Info {
			names = append(names, i.Name)
		}
	}
}
