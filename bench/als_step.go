package main

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// alsUlimits are the limits the containers need on this VM: without CAP_SYS_RESOURCE podman's
// defaults fail with EPERM.
var alsUlimits = []string{"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"}

// step is one timed step, as a user gets a new version running: `podman pull -q` of ref, then
// `podman run -d` of apache2 from it on the host's network, until a GET of its page answers
// 200. The clock runs from the start of the pull to that answer; the page must be the
// version's (want is its <title>). The registry's bytes are those logged between two markers
// around the whole step (podman run asks the registry nothing: the image is there).
func (e *alsEnv) step(ctx context.Context, alog *accessLog, ref, want string) ALSStep {
	var s ALSStep
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil { // untimed, as in pairs.go
		s.Error = "sync: " + err.Error()
		return s
	}
	mark, err := alog.Mark(ctx)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	const name = "kura-bench-als-apache"
	start := time.Now()
	s.Started = start
	if out, err := e.podman(ctx, "pull", "-q", "--tls-verify=false", ref).CombinedOutput(); err != nil {
		s.Error = fmt.Sprintf("podman pull: %v: %s", err, tail(string(out), 500))
	}
	s.Pull = time.Since(start).Seconds()
	if s.Error == "" {
		s.Page, err = e.serve(ctx, name, ref, func() { s.Run = time.Since(start).Seconds() })
		s.Running = time.Since(start).Seconds()
		if err != nil {
			s.Error = err.Error()
		} else if s.Page != want {
			s.Error = fmt.Sprintf("apache2 served %q, want %q", s.Page, want)
		}
		_ = e.podman(ctx, "rm", "--force", "--time", "0", name).Run()
	}
	reqs, err := alog.Since(ctx, mark)
	if err != nil && s.Error == "" {
		s.Error = err.Error()
	}
	s.countBytes(reqs)
	return s
}

// alsApacheScript starts apache2 in the container. /var/lock is /run/lock, which the image
// lacks. chmod: podman 4.3.1's partial pull of a layer without a "./" entry (these layers have
// none) gives the container a root directory of mode 0700, so www-data cannot reach
// /var/www (403) nor load libgcc_s; Kura's layers do not need it, but every set-up runs the
// same command.
const alsApacheScript = "chmod 755 / && mkdir -p /run/lock && exec apache2ctl -D FOREGROUND"

// alsPristine are the programs the corpus "rebuilds" (gen.go: 8-byte patches every few KB, so
// they crash from c1 on): the containers run the base rootfs's, bound in, and serve the
// version's own pages from the image.
var alsPristine = []string{"usr/sbin/apache2", "usr/lib/x86_64-linux-gnu/libapr-1.so.0.7.2"}

// serve starts apache2 from ref (its own start script, which reads /etc/apache2/envvars, with
// the port override bound in) and returns the <title> of its first successful answer; started
// is called when `podman run -d` has returned.
func (e *alsEnv) serve(ctx context.Context, name, ref string, started func()) (string, error) {
	args := append([]string{"run", "-d", "--name", name, "--network", "host"}, alsUlimits...)
	args = append(args, "-v", e.ports+":/etc/apache2/ports.conf:ro")
	for _, f := range alsPristine {
		args = append(args, "-v", filepath.Join(e.base, f)+":/"+f+":ro")
	}
	args = append(args, ref,
		"sh", "-c", alsApacheScript)
	if out, err := e.podman(ctx, args...).CombinedOutput(); err != nil {
		return "", fmt.Errorf("podman run apache2: %v: %s", err, tail(string(out), 500))
	}
	started()
	url := fmt.Sprintf("http://127.0.0.1:%d/", e.port)
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	deadline := time.Now().Add(60 * time.Second)
	for {
		title, err := httpTitle(ctx, client, url)
		if err == nil {
			return title, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			logs, _ := e.podman(context.Background(), "logs", name).CombinedOutput()
			return "", fmt.Errorf("apache2 did not answer within 60 s: %v; container log: %s", err, tail(string(logs), 500))
		}
		time.Sleep(5 * time.Millisecond) // polling the server under test: the figure is this answer's time
	}
}

// countBytes sums what the registry sent during the step, and what podman's own requests got.
func (s *ALSStep) countBytes(reqs []Request) {
	for _, r := range reqs {
		s.Bytes += r.Received
		if strings.HasPrefix(r.UserAgent, alsUserAgent) {
			continue
		}
		s.ByPodman += r.Received
		if r.Method == http.MethodGet && strings.Contains(r.Path, "/blobs/") && r.Received > 64<<10 {
			// The config is a blob too (a few KB); a layer blob, or ranges of one, is more.
			s.PodmanBlobGets++
			s.PodmanBlobSize += r.Received
		}
	}
}

// side takes what the set-up holds after ten versions: disk and the os-release check (the page
// cache is measured apart, alsPageCachePasses).
func (e *alsEnv) side(ctx context.Context, last string) ALSSide {
	s := ALSSide{Tool: e.tool.name, DiskParts: []string{e.pod.root}}
	if e.tool.kura {
		s.DiskParts = append(s.DiskParts, filepath.Join(e.dir, "store"), filepath.Join(e.dir, "state"))
	}
	var err error
	if s.Disk, err = duTotal(s.DiskParts); err != nil {
		s.Error = err.Error()
	}
	args := append(append([]string{"run", "--rm", "--network", "none"}, alsUlimits...), last, "cat", "/etc/os-release")
	out, err := e.podman(ctx, args...).CombinedOutput()
	s.OSRelease = strings.TrimSpace(string(out))
	if err != nil {
		s.Error = strings.TrimSpace(s.Error + fmt.Sprintf(" podman run cat /etc/os-release: %v", err))
	}
	return s
}

// meminfo is /proc/meminfo in bytes.
func meminfo() map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return out
	}
	for _, l := range strings.Split(string(b), "\n") {
		var k string
		var n int64
		if _, err := fmt.Sscanf(l, "%s %d kB", &k, &n); err == nil {
			out[strings.TrimSuffix(k, ":")] = n * 1024
		}
	}
	return out
}

// vmstat is a counter of /proc/vmstat (-1 if it cannot be read).
func vmstat(name string) int64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			var n int64
			if _, err := fmt.Sscanf(v, "%d", &n); err == nil {
				return n
			}
		}
	}
	return -1
}

// duTotal is `du -sbcx` over dirs: apparent sizes, every hard-linked inode once across all of
// them, not crossing into other file systems (Kura's per-layer composefs mounts are views of
// its store, which is counted).
func duTotal(dirs []string) (int64, error) {
	out, err := exec.Command("du", append([]string{"-sbcx"}, dirs...)...).Output()
	if err != nil {
		return 0, fmt.Errorf("du %v: %w", dirs, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	var n int64
	if _, err := fmt.Sscanf(lines[len(lines)-1], "%d", &n); err != nil {
		return 0, fmt.Errorf("du %v: %q: %w", dirs, lines[len(lines)-1], err)
	}
	return n, nil
}
