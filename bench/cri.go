package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"
)

// webServer is the container's application: a small HTTP server run by the
// image's own perl (perl-base), answering every request with
// /var/www/html/index.html. Not apache2: the corpus "rebuilds"
// /usr/sbin/apache2 by patching 8 bytes every 4 KiB (every chunk differs,
// see gen.go), so from c1 on that binary is not a program any more (it
// dies with SIGSEGV). What the figure needs is the kubelet's path: the
// image pulled, a container created and started from it, a process reading
// its files from the snapshot and answering on a port.
const webServer = `use IO::Socket::INET; $SIG{TERM} = sub { exit 0 };
my ($port, $file) = @ARGV;
open(my $f, "<", $file) or die "$file: $!"; binmode $f; my $body = do { local $/; <$f> };
my $s = IO::Socket::INET->new(LocalAddr => "127.0.0.1", LocalPort => $port, Listen => 64, ReuseAddr => 1) or die "listen $port: $!";
while (my $c = $s->accept) { sysread($c, my $req, 65536);
  print $c "HTTP/1.0 200 OK\r\nContent-Type: text/html\r\nContent-Length: " . length($body) . "\r\n\r\n", $body; close $c }`

// CtdStart is one timed start of a version on one setup: the calls the
// kubelet makes for a new pod's container, from PullImage to the first HTTP
// answer of the container's server.
type CtdStart struct {
	Setup       string  `json:"setup"`
	Version     string  `json:"version"`
	Round       int     `json:"round"`
	First       bool    `json:"first"`       // went before the other setup on this version
	PullSeconds float64 `json:"pullSeconds"` // PullImage alone
	Seconds     float64 `json:"seconds"`     // PullImage to the first HTTP answer
	// Traffic is what the registry's access log counted between PullImage
	// and the answer: containerd's requests and, for Kura, its snapshotter's.
	Traffic Traffic          `json:"traffic"`
	ByAgent map[string]int64 `json:"byAgent,omitempty"` // bytes received per User-Agent
	Error   string           `json:"error,omitempty"`
}

func hostNetwork() *runtimeapi.NamespaceOption {
	return &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_NODE}
}

// podConfig is a pod on the host's network (no CNI), as the kubelet sends it.
func (s *ctdSetup) podConfig(name string) *runtimeapi.PodSandboxConfig {
	return &runtimeapi.PodSandboxConfig{
		Metadata:     &runtimeapi.PodSandboxMetadata{Name: name, Uid: "uid-" + name, Namespace: "bench"},
		LogDirectory: filepath.Join(s.base, "logs", name),
		Linux: &runtimeapi.LinuxPodSandboxConfig{
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: hostNetwork()},
		},
	}
}

// startVersion runs the pod of one version: RunPodSandbox first (untimed: the
// kubelet makes the sandbox before it pulls), then, timed, PullImage,
// CreateContainer, StartContainer and the wait for the server's first
// answer. The registry's access log gives the bytes of that span.
func (s *ctdSetup) startVersion(ctx context.Context, alog *accessLog, ref, version string) CtdStart {
	r := CtdStart{Setup: s.name, Version: version}
	fail := func(what string, err error) CtdStart {
		r.Error = fmt.Sprintf("%s: %v", what, err)
		return r
	}
	// kura fsyncs what it stores, containerd's overlayfs unpack does not:
	// write out dirty pages first so neither pays for the other's writeback.
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil {
		return fail("sync", err)
	}
	pc := s.podConfig(version)
	pod, err := s.rt.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: pc})
	if err != nil {
		return fail("RunPodSandbox", err)
	}
	s.pods = append(s.pods, pod.PodSandboxId)
	addr, err := freeLoopbackAddr()
	if err != nil {
		return fail("port", err)
	}
	mark, err := alog.Mark(ctx)
	if err != nil {
		return fail("access log", err)
	}
	start := time.Now()
	err = s.pullAndStart(ctx, pod.PodSandboxId, pc, ref, addr, &r, start)
	r.Seconds = time.Since(start).Seconds()
	if err != nil {
		r.Error = err.Error()
	}
	reqs, lerr := alog.Since(ctx, mark)
	if lerr != nil && r.Error == "" {
		r.Error = lerr.Error()
	}
	r.Traffic, r.ByAgent = sumTraffic(reqs), map[string]int64{}
	for _, q := range reqs {
		r.ByAgent[agentName(q.UserAgent)] += q.Received
	}
	return r
}

// pullAndStart is the timed span of startVersion.
func (s *ctdSetup) pullAndStart(ctx context.Context, pod string, pc *runtimeapi.PodSandboxConfig, ref, addr string, r *CtdStart, start time.Time) error {
	if _, err := s.img.PullImage(ctx, &runtimeapi.PullImageRequest{Image: &runtimeapi.ImageSpec{Image: ref}, SandboxConfig: pc}); err != nil {
		return fmt.Errorf("PullImage: %w", err)
	}
	r.PullSeconds = time.Since(start).Seconds()
	_, port, _ := strings.Cut(addr, ":")
	cc := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: "web"},
		Image:    &runtimeapi.ImageSpec{Image: ref},
		Command:  []string{"/usr/bin/perl", "-e", webServer, port, "/var/www/html/index.html"},
		LogPath:  "web.log",
		Linux: &runtimeapi.LinuxContainerConfig{
			SecurityContext: &runtimeapi.LinuxContainerSecurityContext{NamespaceOptions: hostNetwork()},
		},
	}
	c, err := s.rt.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: pod, Config: cc, SandboxConfig: pc})
	if err != nil {
		return fmt.Errorf("CreateContainer: %w", err)
	}
	if _, err := s.rt.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return fmt.Errorf("StartContainer: %w", err)
	}
	err = waitAnswer(ctx, "http://"+addr+"/", s.exitedCheck(ctx, c.ContainerId))
	if err == nil {
		// Only answering containers take part in the page-cache measure.
		s.ctrs = append(s.ctrs, c.ContainerId)
	}
	return err
}

// exitedCheck returns an error once the container has exited (a server
// that crashed, e.g. on SIGBUS, will never answer).
func (s *ctdSetup) exitedCheck(ctx context.Context, id string) func() error {
	return func() error {
		st, err := s.rt.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil || st.Status == nil || st.Status.State != runtimeapi.ContainerState_CONTAINER_EXITED {
			return nil
		}
		return fmt.Errorf("container exited: code %d, reason %q, message %q", st.Status.ExitCode, st.Status.Reason, st.Status.Message)
	}
}

// waitAnswer polls u every 5 ms until it answers 200 with an HTML page; every
// 50th poll it asks exited whether the server is gone.
func waitAnswer(ctx context.Context, u string, exited func() error) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(3 * time.Minute)
	var last error
	for i := 0; time.Now().Before(deadline); i++ {
		if i%50 == 49 {
			if err := exited(); err != nil {
				return fmt.Errorf("no answer from %s: %w", u, err)
			}
		}
		resp, err := client.Get(u)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK && strings.Contains(string(b), "<html") {
				return nil
			}
			err = fmt.Errorf("status %s, %d bytes", resp.Status, len(b))
		}
		last = err
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	return fmt.Errorf("no answer from %s within 3 min: %w", u, last)
}

// agentName shortens a User-Agent to its first product name ("containerd",
// "kura").
func agentName(ua string) string {
	name, _, _ := strings.Cut(ua, "/")
	if f := strings.Fields(name); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// execAll runs cmd in every running container of the setup, two at a time
// (as the podman page-cache containers run), and fails if one fails.
func (s *ctdSetup) execAll(ctx context.Context, cmd []string) error {
	return eachRef(slices.Clone(s.ctrs), func(id string) error {
		out, err := s.rt.ExecSync(ctx, &runtimeapi.ExecSyncRequest{ContainerId: id, Cmd: cmd, Timeout: 600})
		if err != nil {
			return fmt.Errorf("exec in %s: %w", id, err)
		}
		if out.ExitCode != 0 {
			return fmt.Errorf("exec in %s: exit %d: %s", id, out.ExitCode, tail(string(out.Stderr), 300))
		}
		return nil
	})
}
