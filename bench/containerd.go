package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// The set-ups of the containerd comparison, as the report names them
// (-ctd-setups picks them; overlayfs and kura by default).
const (
	ctdOverlay  = "overlayfs"
	ctdKura     = "kura"
	ctdKuraLazy = "kura-lazy" // kura snapshotter --lazy
	ctdStargz   = "stargz"    // stargz-snapshotter (stargz-grpc) on the eStargz images
)

// snapshotterOf is the containerd snapshotter a set-up runs on.
func snapshotterOf(setup string) string {
	if setup == ctdKuraLazy {
		return ctdKura
	}
	return setup
}

// repoOf is the repository a set-up pulls: stargz-snapshotter the eStargz
// conversions, the others kura's zstd:chunked pushes.
func repoOf(setup string) string {
	if setup == ctdStargz {
		return estargzRepo
	}
	return kuraRepo
}

// daemon is a long-running process of the comparison (containerd, kura
// snapshotter), its output in a log file.
type daemon struct {
	cmd  *exec.Cmd
	done chan error
	log  string
}

// startDaemon starts argv with its output in logPath; it dies with the
// harness (Pdeathsig), so an interrupted run leaves no daemon behind.
func startDaemon(argv []string, logPath string) (*daemon, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", argv[0], err)
	}
	d := &daemon{cmd: cmd, done: make(chan error, 1), log: logPath}
	go func() { d.done <- cmd.Wait(); f.Close() }()
	return d, nil
}

// stop sends SIGTERM and waits (SIGKILL after 30 s).
func (d *daemon) stop() {
	if d == nil || d.cmd.Process == nil {
		return
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
	d.cmd.Process = nil
}

// waitSocket waits until a unix socket accepts connections or the daemon exits.
func (d *daemon) waitSocket(ctx context.Context, sock string) error {
	for range 1200 {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			return nil
		}
		select {
		case err := <-d.done:
			d.done <- err
			return fmt.Errorf("%s exited (%v); log %s: %s", filepath.Base(d.cmd.Path), err, d.log, tailFile(d.log))
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s not serving on %s after 60 s (log %s)", filepath.Base(d.cmd.Path), sock, d.log)
}

func tailFile(path string) string {
	b, _ := os.ReadFile(path)
	return tail(string(b), 800)
}

// ctdSetup is one private containerd 1.6 with its CRI plugin (own root,
// state, sockets, runc root), on the overlayfs snapshotter or on Kura's.
type ctdSetup struct {
	name      string
	snap      string // snapshotterOf(name)
	base      string // on disk: containerd's root, Kura's store and state, logs
	run       string // tmpfs: sockets, containerd's state, runc's root
	sock      string
	kuraStore string // kura only
	kuraState string
	kura, ctd *daemon
	stargz    *daemon // stargz only
	conn      *grpc.ClientConn
	rt        runtimeapi.RuntimeServiceClient
	img       runtimeapi.ImageServiceClient
	pods      []string
	ctrs      []string // running containers, one per version
	keepLogs  string   // the daemons' logs are copied here (NAME-containerd.log, …) at stop
}

func (s *ctdSetup) root() string { return filepath.Join(s.base, "root") }

// ctdConfig is containerd's configuration: the CRI plugin on the setup's
// snapshotter (Kura: with the snapshot labels its remote path needs, as
// docs/snapshotter.md says), the sandbox image from the local registry
// (the machine is offline), a plain-HTTP mirror entry for it, runc with a
// private state root (the machine's own containerd uses /run/containerd/runc),
// an empty CNI directory (the pods use the host's network), and
// restrict_oom_score_adj (this VM refuses to lower a process's
// oom_score_adj, which the CRI plugin does for sandboxes: -998).
func (s *ctdSetup) ctdConfig(regAddr, pauseRef string) string {
	cri := `plugins."io.containerd.grpc.v1.cri"`
	snap := snapshotterOf(s.name)
	annotations := ""
	proxy := ""
	if snap != ctdOverlay {
		annotations = "\n  disable_snapshot_annotations = false"
		proxy = fmt.Sprintf("[proxy_plugins.%s]\n  type = \"snapshot\"\n  address = %q\n", snap, filepath.Join(s.run, snap+".sock"))
	}
	return fmt.Sprintf(`version = 2
root = %q
state = %q
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
%s[%s]
  sandbox_image = %q
  restrict_oom_score_adj = true
[%s.cni]
  bin_dir = %q
  conf_dir = %q
[%s.containerd]
  snapshotter = %q%s
[%s.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[%s.containerd.runtimes.runc.options]
  Root = %q
[%s.registry.mirrors.%q]
  endpoint = ["http://%s"]
`, s.root(), filepath.Join(s.run, "state"), s.sock, s.sock+".ttrpc", filepath.Join(s.base, "opt"), proxy,
		cri, pauseRef, cri, filepath.Join(s.base, "cni-bin"), filepath.Join(s.base, "cni-conf"),
		cri, snap, annotations, cri, cri, filepath.Join(s.run, "runc"), cri, regAddr, regAddr)
}

// startCtdSetup makes a fresh setup under work and runDir and starts its
// daemons (Kura's snapshotter first: containerd connects to it lazily, but
// the CRI plugin's first pull must find it serving).
func startCtdSetup(ctx context.Context, cfg config, name, work, runDir, regAddr, pauseRef string, kuraArgs []string) (*ctdSetup, error) {
	s := &ctdSetup{name: name, snap: snapshotterOf(name), base: filepath.Join(work, name), run: filepath.Join(runDir, name), keepLogs: filepath.Join(cfg.out, "ctd-logs", name)}
	s.sock = filepath.Join(s.run, "containerd.sock")
	for _, d := range []string{s.base, s.run} {
		if err := removeTree(d); err != nil {
			return nil, err
		}
	}
	for _, d := range []string{s.run, filepath.Join(s.base, "cni-bin"), filepath.Join(s.base, "cni-conf"), filepath.Join(s.base, "logs")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	switch {
	case s.snap == ctdKura:
		if err := s.startKura(ctx, cfg, kuraArgs); err != nil {
			return s, err
		}
	case s.snap == ctdStargz:
		if err := s.startStargz(ctx, cfg); err != nil {
			return s, err
		}
	}
	conf := filepath.Join(s.base, "containerd.toml")
	if err := os.WriteFile(conf, []byte(s.ctdConfig(regAddr, pauseRef)), 0o644); err != nil {
		return s, err
	}
	var err error
	if s.ctd, err = startDaemon([]string{"containerd", "--config", conf, "--log-level", "warn"}, filepath.Join(s.base, "containerd.log")); err != nil {
		return s, err
	}
	if err := s.ctd.waitSocket(ctx, s.sock); err != nil {
		return s, err
	}
	return s, s.connect(ctx)
}

// startKura starts `kura snapshotter` on a store and state of its own, with
// the registry flags of `kura pull` (plain HTTP to the loopback registry).
func (s *ctdSetup) startKura(ctx context.Context, cfg config, extra []string) error {
	s.kuraStore, s.kuraState = filepath.Join(s.base, "kura-store"), filepath.Join(s.base, "kura-state")
	sock := filepath.Join(s.run, "kura.sock")
	argv := append([]string{cfg.kura, "--root", s.kuraStore}, extra...)
	argv = append(argv, "snapshotter", "--address", sock, "--state", s.kuraState, "--tls-verify=false")
	if s.name == ctdKuraLazy {
		argv = append(argv, "--lazy")
	}
	var err error
	if s.kura, err = startDaemon(argv, filepath.Join(s.base, "kura-snapshotter.log")); err != nil {
		return err
	}
	return s.kura.waitSocket(ctx, sock)
}

// startStargz starts stargz-snapshotter's daemon (bench/cmd/stargz-grpc) with
// upstream's default configuration (no config file: background fetch on,
// prefetch of the landmarked files, the FUSE mounts and its cache under its
// root) and a root of its own; it reaches the loopback registry by plain
// HTTP as upstream does for localhost.
func (s *ctdSetup) startStargz(ctx context.Context, cfg config) error {
	sock := filepath.Join(s.run, "stargz.sock")
	argv := []string{cfg.stargzGrpc, "--address", sock, "--root", s.stargzRoot()}
	var err error
	if s.stargz, err = startDaemon(argv, filepath.Join(s.base, "stargz-grpc.log")); err != nil {
		return err
	}
	return s.stargz.waitSocket(ctx, sock)
}

func (s *ctdSetup) stargzRoot() string { return filepath.Join(s.base, "stargz-root") }

// connect dials containerd's CRI service and waits until it answers Version
// (the CRI plugin finishes its start after the socket is up).
func (s *ctdSetup) connect(ctx context.Context) error {
	var err error
	if s.conn, err = grpc.NewClient("unix://"+s.sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return err
	}
	s.rt, s.img = runtimeapi.NewRuntimeServiceClient(s.conn), runtimeapi.NewImageServiceClient(s.conn)
	var last error
	for range 600 {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, last = s.rt.Version(cctx, &runtimeapi.VersionRequest{})
		cancel()
		if last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("CRI of %s does not answer: %w", s.name, last)
}

// stop removes the pods (their containers and shims go with them), stops
// the daemons and unmounts everything the setup mounted. Its files stay until
// the run is over: on a file system without a journal (this machine's root),
// ext4 skips the inodes freed in the last minute when it allocates new ones,
// one by one, so a set-up started right after the last one's files were
// removed would create each file in time proportional to the files just
// removed (a lazy pull's 7,446 placeholders took 3.5 s instead of 0.2 s).
func (s *ctdSetup) stop() []string {
	var errs []string
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	for _, p := range s.pods {
		if s.rt == nil {
			break
		}
		if _, err := s.rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p}); err != nil {
			errs = append(errs, fmt.Sprintf("%s: stop pod: %v", s.name, err))
		}
		if _, err := s.rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p}); err != nil {
			errs = append(errs, fmt.Sprintf("%s: remove pod: %v", s.name, err))
		}
	}
	if s.conn != nil {
		s.conn.Close()
	}
	s.ctd.stop()
	s.kura.stop()
	s.stargz.stop()
	for _, l := range []string{"containerd.log", "kura-snapshotter.log", "stargz-grpc.log"} {
		if b, err := os.ReadFile(filepath.Join(s.base, l)); err == nil && s.keepLogs != "" {
			_ = os.WriteFile(s.keepLogs+"-"+l, b, 0o644)
		}
	}
	for _, d := range []string{s.run, s.base} {
		if err := unmountTree(d); err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", s.name, err))
		}
	}
	return errs
}

// diskDirs are the directories whose size is the setup's disk use: all of
// containerd's root (content store, snapshots, metadata) and, for Kura,
// its store and snapshotter state.
func (s *ctdSetup) diskDirs() map[string]string {
	d := map[string]string{"containerd root": s.root()}
	switch s.snap {
	case ctdKura:
		d["kura store"], d["kura snapshotter state"] = s.kuraStore, s.kuraState
	case ctdStargz:
		d["stargz root"] = s.stargzRoot()
	}
	return d
}
