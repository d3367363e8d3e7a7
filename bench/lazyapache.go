package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// The lazy-apache comparison (issue 17): time from the start of a pull to apache2 of bench
// image c0 answering its first HTTP request, for kura pull --lazy, kura pull (whole image) and
// podman 4.3.1 (pull + run), alternating, and the registry bytes each fetched until then (the
// registry's own access log). Kura's apache2 runs chrooted into the mount in a private mount
// namespace (unshare -m, tmpfs on /run, /var/log, /tmp), not in a podman container: podman's
// side pays its container start (runc, network namespace setup skipped with --net=host), Kura's
// does not. A fourth mode, kura pull --lazy with the bulk fetch held
// back (--background-after 10m), gives the bytes of the on-demand path alone and the size of
// the placeholders filled by then: the bytes of the files the container read.

// lazyApacheCfg is the -lazy-apache run.
type lazyApacheCfg struct {
	regData string // a registry rootdirectory holding lazy/c0:latest (zstd:chunked, kura-pushed)
	runs    int
	modes   string // comma-separated subset of kura-lazy, podman, kura-full, kura-lazy-held
}

// apacheCmd starts apache2 in the foreground the way apache2ctl would, without systemd.
// /run/lock first: /var/lock links to it, and mkdir -p fails on the dangling link.
const apacheCmd = `mkdir -p /run/lock && . /etc/apache2/envvars && mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR" && exec /usr/sbin/apache2 -DFOREGROUND`

type lazyRun struct {
	Mode    string
	Seconds float64
	Bytes   int64 // registry body bytes until the first answer
	Filled  int64 // lazy: bytes of the placeholders filled by then
	Files   int
}

func runLazyApache(ctx context.Context, cfg config, la lazyApacheCfg) error {
	root := filepath.Join(cfg.work, "lazy-apache")
	regRoot := filepath.Join(root, "registry")
	if _, err := os.Stat(filepath.Join(regRoot, "data")); err != nil {
		if err := os.MkdirAll(regRoot, 0o755); err != nil {
			return err
		}
		if out, err := exec.Command("cp", "-al", la.regData, filepath.Join(regRoot, "data")).CombinedOutput(); err != nil {
			return fmt.Errorf("cp -al %s: %v: %s", la.regData, err, out)
		}
	}
	reg, err := startRegistry(ctx, regRoot, false)
	if err != nil {
		return err
	}
	defer reg.Stop()
	alog := newAccessLog(reg.Log, reg.Addr)
	ref := reg.Addr + "/lazy/c0:latest"
	modes := strings.Split(la.modes, ",")
	var all []lazyRun
	for i := 0; i < la.runs; i++ {
		for j := range modes {
			mode := modes[(i+j)%len(modes)] // rotate the order each round
			r, err := lazyApacheOnce(ctx, cfg, root, ref, reg.Addr, mode, alog)
			if err != nil {
				return fmt.Errorf("round %d, %s: %w", i+1, mode, err)
			}
			log.Printf("lazy-apache round %d %s: %.2f s, %d bytes fetched, %d bytes in %d placeholders filled",
				i+1, mode, r.Seconds, r.Bytes, r.Filled, r.Files)
			all = append(all, r)
		}
	}
	printLazySummary(os.Stdout, modes, all)
	return nil
}

// lazyApacheOnce is one timed start: fresh store, pull, run, first answer, clean-up.
func lazyApacheOnce(ctx context.Context, cfg config, root, ref, regAddr, mode string, alog *accessLog) (lazyRun, error) {
	r := lazyRun{Mode: mode}
	dir := filepath.Join(root, "run")
	if err := removeTree(dir); err != nil {
		return r, err
	}
	pe, err := newPodmanEnv(filepath.Join(dir, "podman"), false, regAddr)
	if err != nil {
		return r, err
	}
	defer pe.remove()
	mark, err := alog.Mark(ctx)
	if err != nil {
		return r, err
	}
	start := time.Now()
	exited := make(chan struct{})
	stop, err := startApache(ctx, cfg, pe, dir, ref, mode, exited)
	if stop != nil {
		defer stop()
	}
	if err != nil {
		return r, err
	}
	if err := waitFirstAnswer(ctx, "http://127.0.0.1/", 3*time.Minute, exited); err != nil {
		return r, err
	}
	r.Seconds = time.Since(start).Seconds()
	reqs, err := alog.Since(ctx, mark)
	if err != nil {
		return r, err
	}
	for _, q := range reqs {
		r.Bytes += q.Received
	}
	r.Filled, r.Files, err = filledPlaceholders(filepath.Join(dir, "store", "lazy"))
	return r, err
}

// startApache pulls and starts apache2 for mode; stop undoes what was started.
// exited is closed if Kura's apache2 ends.
func startApache(ctx context.Context, cfg config, pe *podmanEnv, dir, ref, mode string, exited chan struct{}) (func(), error) {
	name := "lazy-apache"
	if mode == "podman" {
		if out, err := pe.command(ctx, "pull", "-q", "--tls-verify=false", ref).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("podman pull: %v: %s", err, tail(string(out), 400))
		}
		stop := func() { pe.command(context.Background(), "rm", "-f", name).Run() }
		out, err := pe.command(ctx, "run", "-d", "--name", name, "--net=host", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096", ref, "/bin/sh", "-c", apacheCmd).CombinedOutput()
		if err != nil {
			return stop, fmt.Errorf("podman run: %v: %s", err, tail(string(out), 400))
		}
		return stop, nil
	}
	store, mnt := filepath.Join(dir, "store"), filepath.Join(dir, "mnt")
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		return nil, err
	}
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	if err := kuraPullFor(ctx, cfg, store, ref, mode, &stops); err != nil {
		return stop, err
	}
	if out, err := exec.CommandContext(ctx, cfg.kura, "--root", store, "mount", "c0", mnt).CombinedOutput(); err != nil {
		return stop, fmt.Errorf("kura mount: %v: %s", err, out)
	}
	stops = append(stops, func() { exec.Command("umount", mnt).Run() })
	// apache2 chrooted into the mount, in its own mount namespace with tmpfs where it writes
	// (the mount is read-only): /run (also /var/run, /var/lock) and /var/log.
	script := fmt.Sprintf(`set -e; for d in run var/log tmp; do mount -t tmpfs tmpfs %[1]s/$d; done; exec chroot %[1]s /bin/sh -c '%[2]s'`, mnt, apacheCmd)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", script)
	var errBuf strings.Builder
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		return stop, err
	}
	go func() {
		cmd.Wait()
		log.Printf("lazy-apache %s: apache2 ended: %s", mode, tail(errBuf.String(), 200))
		close(exited)
	}()
	stops = append(stops, func() {
		cmd.Process.Signal(syscall.SIGTERM) // apache2 stops its children on SIGTERM
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-exited
		}
	})
	return stop, nil
}

// kuraPullFor runs the pull of mode: whole, or lazy until kura says the image is mountable
// (the service keeps running; its stop is appended to stops).
func kuraPullFor(ctx context.Context, cfg config, store, ref, mode string, stops *[]func()) error {
	common := []string{"docker://" + ref, "--tls-verify=false", "--name", "c0"}
	if mode == "kura-full" {
		args := append([]string{"--root", store, "pull", "-q"}, common...)
		if out, err := exec.CommandContext(ctx, cfg.kura, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("kura pull: %v: %s", err, out)
		}
		return nil
	}
	args := append([]string{"--root", store, "pull", "--lazy"}, common...)
	if mode == "kura-lazy-held" {
		args = append(args, "--background-after", "10m")
	}
	cmd := exec.CommandContext(ctx, cfg.kura, args...)
	var errBuf strings.Builder
	cmd.Stderr = &errBuf
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	*stops = append(*stops, func() { cmd.Process.Signal(syscall.SIGTERM); cmd.Wait() })
	br := bufio.NewReader(out)
	line, err := br.ReadString('\n')
	if !strings.Contains(line, "mountable") {
		return fmt.Errorf("kura pull --lazy said %q (%v): %s", line, err, errBuf.String())
	}
	go io.Copy(io.Discard, br)
	return nil
}

// waitFirstAnswer polls u until it answers 200: the first HTTP answer of the container.
func waitFirstAnswer(ctx context.Context, u string, limit time.Duration, exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second}
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if resp, err := client.Get(u); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-exited:
			return fmt.Errorf("apache2 ended before answering")
		case <-time.After(10 * time.Millisecond):
		}
	}
	return fmt.Errorf("%s did not answer within %v", u, limit)
}

// filledPlaceholders sums the placeholders of the pending pulls under lazyRoot that hold
// content: with the bulk fetch held back, the files read since the pull began.
func filledPlaceholders(lazyRoot string) (int64, int, error) {
	var n int64
	files := 0
	err := filepath.WalkDir(lazyRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) {
				return nil
			}
			return err
		}
		if d.Type().IsRegular() && strings.Contains(p, "/objects/") {
			if fi, err := d.Info(); err == nil && fi.Size() > 0 {
				n += fi.Size()
				files++
			}
		}
		return nil
	})
	return n, files, err
}

func printLazySummary(w io.Writer, modes []string, runs []lazyRun) {
	for _, m := range modes {
		var secs, bytes, filled []float64
		for _, r := range runs {
			if r.Mode == m {
				secs, bytes, filled = append(secs, r.Seconds), append(bytes, float64(r.Bytes)), append(filled, float64(r.Filled))
			}
		}
		fmt.Fprintf(w, "%-15s n=%d  time to first answer median %.2f s (%.2f–%.2f)  bytes median %.1f MiB (%.1f–%.1f)  filled median %.2f MiB\n",
			m, len(secs), med(secs), minOf(secs), maxOf(secs), med(bytes)/(1<<20), minOf(bytes)/(1<<20), maxOf(bytes)/(1<<20), med(filled)/(1<<20))
	}
}

func med(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func minOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[0]
}

func maxOf(v []float64) float64 {
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)-1]
}
