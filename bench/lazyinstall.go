package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// install is one tool's installation for a round of the lazy-apache comparison: a private
// podman, or a Kura store (with the lazy pulls still serving and the mounts it made).
type install struct {
	tool  string
	dir   string
	pe    *podmanEnv
	store string
	// onMounted, if set, runs once the mount is made, before apache2 starts (the trace run's
	// open trace).
	onMounted func(mnt string) error
}

func (b *lazyBench) newInstall(dir, tool string) (*install, error) {
	if err := removeTree(dir); err != nil {
		return nil, err
	}
	in := &install{tool: tool, dir: dir, store: filepath.Join(dir, "store")}
	if tool == "podman" {
		pe, err := newPodmanEnv(filepath.Join(dir, "podman"), false, b.regAddr)
		if err != nil {
			return nil, err
		}
		in.pe = pe
	}
	return in, os.MkdirAll(dir, 0o755)
}

// close stops what the installation runs and unmounts what it mounted; its files stay until
// removeInstalls (see lazyBench.used).
func (in *install) close(b *lazyBench) {
	if in.pe != nil {
		_ = in.pe.command(context.Background(), "rm", "--all", "--force", "--time", "0").Run()
		if err := removeTree(in.pe.runroot); err != nil {
			log.Printf("lazy-apache: removing podman's %s: %v", in.pe.runroot, err)
		}
	}
	if err := unmountTree(in.dir); err != nil {
		log.Printf("lazy-apache: %v", err)
	}
	b.used = append(b.used, in.dir)
}

// removeInstalls removes the installations of the run, once it is over.
func (b *lazyBench) removeInstalls() {
	for _, dir := range b.used {
		if err := removeTree(dir); err != nil {
			log.Printf("lazy-apache: removing %s: %v", dir, err)
		}
	}
	b.used = nil
}

// apacheRun is a started apache2: exited is closed if it ends; finish stops it and undoes
// what the start made; a lazy pull's still serving until complete.
type apacheRun struct {
	exited chan struct{}
	pull   *lineWaiter // lazy: the pull's stdout
	mnt    string
	stops  []func() error
	// pulled and mounted: when the pull returned and the mount (podman: the container) was made.
	pulled, mounted time.Time
}

func (r *apacheRun) finish() error {
	var err error
	for i := len(r.stops) - 1; i >= 0; i-- {
		err = errors.Join(err, r.stops[i]())
	}
	return err
}

// start pulls version and starts apache2 from it: the timed path.
func (in *install) start(ctx context.Context, b *lazyBench, version string, extra ...string) (*apacheRun, error) {
	if in.pe != nil {
		return in.startPodman(ctx, b, version)
	}
	run := &apacheRun{exited: make(chan struct{}), mnt: filepath.Join(in.dir, "mnt-"+version)}
	if err := in.kuraPull(ctx, b, version, run, extra); err != nil {
		return run, err
	}
	run.pulled = time.Now()
	if err := os.MkdirAll(run.mnt, 0o755); err != nil {
		return run, err
	}
	if out, err := exec.CommandContext(ctx, b.cfg.kura, "--root", in.store, "mount", version, run.mnt).CombinedOutput(); err != nil {
		return run, fmt.Errorf("kura mount: %v: %s", err, out)
	}
	run.mounted = time.Now()
	run.stops = append(run.stops, func() error {
		if out, err := exec.Command("umount", run.mnt).CombinedOutput(); err != nil {
			return fmt.Errorf("umount %s: %v: %s", run.mnt, err, out)
		}
		return nil
	})
	if in.onMounted != nil {
		if err := in.onMounted(run.mnt); err != nil {
			return run, err
		}
	}
	if in.tool == "kura-lazy" && b.la.preRead {
		preReadMmapFirst(run.mnt)
	}
	return run, in.startChroot(b, run)
}

// startPodman is podman's pull and run, as als_step.go does them.
func (in *install) startPodman(ctx context.Context, b *lazyBench, version string) (*apacheRun, error) {
	run := &apacheRun{exited: make(chan struct{})}
	ref := b.ref(version)
	if out, err := in.pe.command(ctx, "pull", "-q", "--tls-verify=false", ref).CombinedOutput(); err != nil {
		return run, fmt.Errorf("podman pull: %v: %s", err, tail(string(out), 400))
	}
	run.pulled = time.Now()
	name := "kura-bench-lazy-" + version
	run.stops = append(run.stops, func() error {
		return in.pe.command(context.Background(), "rm", "--force", "--time", "0", name).Run()
	})
	args := append([]string{"run", "-d", "--name", name, "--network", "host"}, alsUlimits...)
	args = append(args, "-v", b.ports+":/etc/apache2/ports.conf:ro")
	for _, f := range alsPristine {
		args = append(args, "-v", filepath.Join(b.base, f)+":/"+f+":ro")
	}
	args = append(args, ref, "sh", "-c", alsApacheScript)
	if out, err := in.pe.command(ctx, args...).CombinedOutput(); err != nil {
		return run, fmt.Errorf("podman run: %v: %s", err, tail(string(out), 400))
	}
	run.mounted = time.Now()
	return run, nil
}

// kuraPull runs kura pull: whole, or lazy until kura says the image is mountable (the
// service goes on; finish waits until it says complete, after apache2 stopped).
func (in *install) kuraPull(ctx context.Context, b *lazyBench, version string, run *apacheRun, extra []string) error {
	common := []string{"--root", in.store, "pull", "docker://" + b.ref(version), "--tls-verify=false", "--name", version}
	if in.tool == "kura-full" {
		if out, err := exec.CommandContext(ctx, b.cfg.kura, append(common, "-q")...).CombinedOutput(); err != nil {
			return fmt.Errorf("kura pull: %v: %s", err, tail(string(out), 400))
		}
		return nil
	}
	args := append(append(common, "--lazy", "--lazy-mode", b.la.mode, "--log-level", "debug"), extra...)
	cmd := exec.Command(b.cfg.kura, args...)
	// Kept beside the results (the installation is removed after each round): its debug lines
	// time the stages of the pull (metadata, placeholders, serving, start-up window).
	errLog, err := os.CreateTemp(b.cfg.out, "lazy-pull-"+version+"-*.log")
	if err != nil {
		return err
	}
	cmd.Stderr = errLog
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	run.pull = newLineWaiter(out)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); errLog.Close() }()
	run.stops = append(run.stops, func() error { return endLazyPull(cmd, exited, run.pull) })
	if err := run.pull.wait(isMountable, 3*time.Minute); err != nil {
		return fmt.Errorf("kura pull --lazy: %w (log %s)", err, errLog.Name())
	}
	return nil
}

// endLazyPull waits until the lazy pull says complete (apache2 stopped by then) and, once
// the mount is gone (the stop before it in finish's order is the umount), until it exits.
func endLazyPull(cmd *exec.Cmd, exited chan error, w *lineWaiter) error {
	err := w.wait(isComplete, 5*time.Minute)
	select {
	case <-exited:
	case <-time.After(time.Minute):
		cmd.Process.Kill()
		<-exited
		err = errors.Join(err, errors.New("kura pull --lazy did not exit after its mount went"))
	}
	return err
}

// startChroot starts apache2 chrooted into the mount in a private mount namespace: tmpfs where
// it writes (the mount is read-only), the port override and the pristine programs bound in.
func (in *install) startChroot(b *lazyBench, run *apacheRun) error {
	var sb strings.Builder
	fmt.Fprintf(&sb, "set -e; for d in run var/log tmp; do mount -t tmpfs tmpfs %s/$d; done; ", run.mnt)
	fmt.Fprintf(&sb, "mount --bind %s %s/etc/apache2/ports.conf; ", b.ports, run.mnt)
	for _, f := range alsPristine {
		fmt.Fprintf(&sb, "mount --bind %s %s/%s; ", filepath.Join(b.base, f), run.mnt, f)
	}
	fmt.Fprintf(&sb, "exec chroot %s /bin/sh -c '%s'", run.mnt, apacheCmd)
	cmd := exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c", sb.String())
	var errBuf strings.Builder
	cmd.Stderr = &errBuf
	if err := cmd.Start(); err != nil {
		return err
	}
	go func() {
		cmd.Wait()
		if s := errBuf.String(); s != "" {
			log.Printf("lazy-apache %s: apache2 said: %s", in.tool, tail(s, 300))
		}
		close(run.exited)
	}()
	// Stopped before the umount and the end of the lazy pull (finish runs stops in reverse).
	run.stops = append(run.stops, func() error {
		cmd.Process.Signal(syscall.SIGTERM) // apache2 stops its children on SIGTERM
		select {
		case <-run.exited:
		case <-time.After(20 * time.Second):
			cmd.Process.Kill()
			<-run.exited
		}
		return nil
	})
	return nil
}

// mmapFirst are the files of c0 that apache2's start-up (ld.so, glibc's locale and iconv)
// maps before any read(): in fanotify mode a first access by mmap is not filled (SIGBUS; see
// BENCHMARKS.md), so -lazy-apache-preread reads them first, inside the timed path.
var mmapFirst = []string{"etc/ld.so.cache", "usr/lib/x86_64-linux-gnu/gconv/gconv-modules.cache",
	"usr/lib/locale/C.utf8/LC_*", "usr/lib/locale/C.utf8/LC_MESSAGES/*"}

func preReadMmapFirst(mnt string) {
	for _, pat := range mmapFirst {
		matches, _ := filepath.Glob(filepath.Join(mnt, pat))
		for _, m := range matches {
			if f, err := os.Open(m); err == nil {
				io.Copy(io.Discard, f)
				f.Close()
			}
		}
	}
}

// trace is the untimed run of one version that finds what apache2 read: a lazy pull with the
// bulk fetch held back (the update after a whole pull of the version before it), until the
// first answer; then the start-up profile the pull saved lists the files filled on demand.
func (b *lazyBench) trace(ctx context.Context, version string) lazyTrace {
	tr := lazyTrace{Version: version}
	err := b.traceRun(ctx, &tr)
	if err != nil {
		tr.Error = err.Error()
	}
	log.Printf("lazy-apache trace %s: %d files, %.2f MB opened (%d filled); %.2f MB fetched until the answer; TOC %.2f MB %s",
		version, tr.Files, float64(tr.ReadBytes)/1e6, tr.Filled, float64(tr.Fetched)/1e6, float64(tr.TOC)/1e6, tr.Error)
	return tr
}

func (b *lazyBench) traceRun(ctx context.Context, tr *lazyTrace) error {
	in, err := b.newInstall(filepath.Join(b.root, "trace-"+tr.Version), "kura-lazy")
	if err != nil {
		return err
	}
	defer in.close(b)
	versions := strings.Split(b.la.versions, ",")
	if tr.Version != versions[0] { // the update: its predecessor whole first
		full := &install{tool: "kura-full", dir: in.dir, store: in.store}
		if err := full.kuraPull(ctx, b, versions[0], nil, nil); err != nil {
			return err
		}
	}
	if tr.TOC, tr.TarSplit, err = b.metadataSizes(ctx, tr.Version); err != nil {
		return err
	}
	mark, err := b.alog.Mark(ctx)
	if err != nil {
		return err
	}
	var opens *openTrace
	in.onMounted = func(mnt string) (err error) {
		opens, err = startOpenTrace(mnt)
		return err
	}
	run, err := in.start(ctx, b, tr.Version, "--background-after", "20s")
	if run != nil {
		defer run.finish()
	}
	if err == nil {
		err = waitFirstAnswer(ctx, fmt.Sprintf("http://127.0.0.1:%d/", b.port), 3*time.Minute, run.exited)
	}
	if err == nil {
		tr.Paths, tr.ReadBytes, err = opens.stop()
		tr.Files = len(tr.Paths)
	} else if opens != nil {
		opens.stop()
	}
	if err != nil {
		return err
	}
	reqs, err := b.alog.Since(ctx, mark)
	if err != nil {
		return err
	}
	for _, q := range reqs {
		tr.Fetched += q.Received
	}
	if err := run.pull.wait(isComplete, 5*time.Minute); err != nil {
		return err
	}
	return tr.readProfile(in.store)
}

// readProfile counts the paths of the store's one start-up profile: the files that needed a fill
// (read-ahead served the others).
func (tr *lazyTrace) readProfile(store string) error {
	files, err := filepath.Glob(filepath.Join(store, "lazy-profiles", "*.json"))
	if err != nil || len(files) != 1 {
		return fmt.Errorf("start-up profiles in %s: %v (%v)", store, files, err)
	}
	raw, err := os.ReadFile(files[0])
	if err != nil {
		return err
	}
	var p struct {
		Paths []string `json:"paths"`
	}
	if err := json.Unmarshal(raw, &p); err != nil {
		return err
	}
	tr.Filled = len(p.Paths)
	return nil
}
