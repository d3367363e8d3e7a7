// Command stargz-grpc is containerd-stargz-grpc rebuilt from the
// github.com/containerd/stargz-snapshotter library module: the Go module
// proxy serves that module (v0.19.1) but not its cmd/ module, whose main
// package is upstream's daemon. This main does what upstream's does for the
// bench: read the same config.toml, build the snapshotter with
// service.NewStargzSnapshotterService and serve containerd's snapshots API
// on a unix socket, for containerd's proxy_plugins. Upstream's extras (fuse
// manager, CRI keychain, metrics, db-backed metadata) are not used by the
// bench and are left out.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "gRPC socket")
	configPath := flag.String("config", "", "config.toml (upstream's format)")
	root := flag.String("root", "/var/lib/containerd-stargz-grpc", "state directory")
	flag.Parse()
	if err := run(*address, *configPath, *root); err != nil {
		fmt.Fprintln(os.Stderr, "stargz-grpc:", err)
		os.Exit(1)
	}
}

func run(address, configPath, root string) error {
	var cfg service.Config
	if configPath != "" {
		b, err := os.ReadFile(configPath)
		if err != nil {
			return err
		}
		if err := toml.Unmarshal(b, &cfg); err != nil {
			return fmt.Errorf("config %s: %w", configPath, err)
		}
	}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	sn, err := service.NewStargzSnapshotterService(ctx, root, &cfg)
	if err != nil {
		return err
	}
	defer sn.Close()
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	_ = os.Remove(address)
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	srv := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(srv, snapshotservice.FromSnapshotter(sn))
	go func() { <-ctx.Done(); srv.GracefulStop() }()
	return srv.Serve(l)
}
