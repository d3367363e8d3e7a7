package snapshotter

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	snapshots "github.com/containerd/containerd/api/services/snapshots/v1"
	"google.golang.org/grpc"
)

// Serve answers containerd on the unix socket address until ctx is done, then stops: calls in
// flight get up to ten seconds to finish (a remote-path pull is cut short by ctx). A socket
// file left by a killed server is replaced. also registers further services on the same
// server (the CRI image service proxy of package crikeychain).
func Serve(ctx context.Context, address string, s *Service, also ...func(*grpc.Server)) error {
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("snapshotter: removing the old socket: %w", err)
	}
	lis, err := net.Listen("unix", address)
	if err != nil {
		return fmt.Errorf("snapshotter: %w", err)
	}
	return ServeListener(ctx, lis, s, also...)
}

// ServeListener is Serve on a listener the caller made (and that it closes).
func ServeListener(ctx context.Context, lis net.Listener, s *Service, also ...func(*grpc.Server)) error {
	srv := grpc.NewServer()
	snapshots.RegisterSnapshotsServer(srv, s)
	for _, register := range also {
		register(srv)
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(loggingListener{lis, s.log}) }()
	s.log.Info("snapshotter serving", "address", lis.Addr().String(), "root", s.root)
	select {
	case err := <-errc:
		return fmt.Errorf("snapshotter: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { srv.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(10 * time.Second):
		srv.Stop()
	}
	s.log.Info("snapshotter stopped", "address", lis.Addr().String())
	return nil
}

// loggingListener logs each connection: containerd keeps one, and after a restart of the
// snapshotter it reconnects on its own backoff (calls fail until it has), so "client
// connected" is when the snapshotter is usable again.
type loggingListener struct {
	net.Listener
	log *slog.Logger
}

func (l loggingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.log.Info("client connected", "address", l.Addr().String())
	}
	return c, err
}
