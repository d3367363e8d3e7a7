package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/kura-oci/kura/crikeychain"
	"github.com/kura-oci/kura/hoststoml"
	"github.com/kura-oci/kura/layerstore"
	"github.com/kura-oci/kura/pull"
	"github.com/kura-oci/kura/registriesconf"
	"github.com/kura-oci/kura/snapshotter"
)

func init() {
	var rf registryFlags
	var address, state, hostsDir, criUpstream string
	var noRemote, lazyPulls bool
	var lazyHold time.Duration
	cmd := &cobra.Command{
		Use:   "snapshotter",
		Short: "Serve containerd's snapshots API (a proxy plugin) until SIGTERM or SIGINT",
		Long: `Answer containerd's snapshots API on a unix socket (containerd config: a proxy_plugins entry
of type "snapshot" at --address). Active snapshots are overlay mounts over their committed
parents. A Prepare that carries the CRI plugin's labels (image reference and layer digest) is
served from Kura's store: Kura pulls the image (partially, verified; registries.conf and
podman's auth files, as kura pull, plus containerd's hosts.toml mirrors under --hosts-dir),
mounts the layer as the layer store does, commits the
snapshot and tells containerd it exists, so containerd does not download the layer. A layer
containerd unpacks itself (plain path) moves into Kura's store when committed and is mounted
from there. Remove unmounts a layer no snapshot is on any more, and kura gc then frees what no
snapshot uses. With --cri-image-service-path the socket also serves the CRI image service as a
proxy of containerd's (the kubelet's --image-service-endpoint), so the remote path's pulls use
the image pull secrets the kubelet passes (kept in memory only). With --lazy the remote path
pulls lazily: a layer is mountable once its metadata is in, its files are fetched on first
access and in the background by this process, and a restart resumes the pending pulls. See
docs/snapshotter.md.`,
		Args: exactArgs(0),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts := snapshotter.Options{Root: filepath.Join(state, "snapshots"), Log: slog.Default()}
			rf.extend = hostsTOML(hostsDir)
			s, err := openStore()
			if err != nil {
				return err
			}
			ls, err := layerstore.New(s, &pullResolver{rf: &rf, s: s, noRef: true},
				layerstore.Options{State: filepath.Join(state, "layers"), Log: slog.Default()})
			if err != nil {
				return err
			}
			if err := ls.DetachStalePending(); err != nil { // before Revive, which mounts them again
				slog.Warn("stale pending layer mounts left", "err", err)
			}
			opts.Ingester, opts.Unmounter, opts.Objects = ls, ls, ls
			if !noRemote {
				opts.Remote = ls
			}
			var lz *lazyLayers
			if lazyPulls && !noRemote {
				// fanotify only: the FUSE fill service's mounts and lifetime are not made for the
				// pending layer mounts this snapshotter builds (docs/snapshotter.md).
				lz = newLazyLayers(cmd.Context(), &rf, s, ls, lazyConfig{hold: lazyHold, mode: pull.LazyFanotify, refs: filepath.Join(state, "lazy-refs")})
				opts.Lazy = lz
			}
			svc, err := snapshotter.New(opts)
			if err != nil {
				return err
			}
			defer svc.Close()
			if lz != nil {
				lz.completed = func(ctx context.Context, _ []digest.Digest) int { return svc.CompleteLazy(ctx) }
			}
			var also []func(*grpc.Server)
			if criUpstream != "" {
				proxy, closeProxy, err := criProxy(criUpstream)
				if err != nil {
					return err
				}
				defer closeProxy()
				rf.refKeychain = proxy.Keychain
				also = append(also, func(srv *grpc.Server) { runtimeapi.RegisterImageServiceServer(srv, proxy) })
			}
			svc.Revive(cmd.Context()) // before serving: a container must not mount a missing layer
			if lz != nil {
				lz.resumeOrphans(cmd.Context())
			}
			return snapshotter.Serve(cmd.Context(), address, svc, also...)
		},
	}
	rf.register(cmd)
	cmd.Flags().StringVar(&address, "address", "/run/kura/snapshotter.sock", "unix socket containerd connects to")
	cmd.Flags().StringVar(&state, "state", "/var/lib/kura/snapshotter",
		"directory of the snapshots (snapshots/) and of the layers the remote path serves (layers/, on the store's file system)")
	cmd.Flags().StringVar(&hostsDir, "hosts-dir", "/etc/containerd/certs.d",
		"containerd's registry host directory (the CRI plugin's config_path: HOST/hosts.toml): its mirrors are used by the remote path's pulls, after registries.conf's entries of the same host (\"\": none)")
	cmd.Flags().StringVar(&criUpstream, "cri-image-service-path", "",
		"containerd's CRI socket: serve the CRI image service on --address as a proxy of it (the kubelet's --image-service-endpoint), keeping PullImage's credentials (image pull secrets) in memory for the remote path's pulls of that image (stargz-snapshotter's cri_keychain image_service_path)")
	cmd.Flags().BoolVar(&noRemote, "no-remote", false, "never serve a layer from Kura's store: containerd downloads every layer")
	cmd.Flags().BoolVar(&lazyPulls, "lazy", false,
		"remote path by lazy pulls: a layer is mountable once its metadata is fetched, its files are fetched on first access and in the background by this process (fanotify pre-content events; see docs/snapshotter.md)")
	cmd.Flags().DurationVar(&lazyHold, "lazy-background-after", 0,
		"with --lazy: fetch only what containers read for this long after each lazy pull begins, then the rest (0: at once)")
	rootCmd.AddCommand(cmd)
}

// hostsTOML adds containerd's hosts.toml mirrors under dir to registries.conf's entries (a host
// registries.conf configures keeps its entry), so that the remote path pulls from where
// containerd would.
func hostsTOML(dir string) func(*registriesconf.Config) error {
	return func(c *registriesconf.Config) error {
		if dir == "" {
			return nil
		}
		regs, notes, err := hoststoml.Load(dir)
		if err != nil {
			return err
		}
		for _, n := range notes {
			slog.Warn("hosts.toml", "note", n)
		}
		for _, r := range regs {
			added, err := c.AddDefault(r)
			if err != nil {
				return fmt.Errorf("%s: %w", dir, err)
			}
			slog.Info("hosts.toml", "host", r.Prefix, "location", r.Location, "mirrors", len(r.Mirrors), "used", added)
		}
		return nil
	}
}

// criProxy connects to containerd's CRI image service at sock and returns the proxy that
// captures pull credentials in front of it. gRPC connects lazily: containerd may start later.
func criProxy(sock string) (*crikeychain.Proxy, func(), error) {
	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("--cri-image-service-path %s: %w", sock, err)
	}
	return crikeychain.New(runtimeapi.NewImageServiceClient(conn)), func() { conn.Close() }, nil
}
