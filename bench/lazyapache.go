package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// The lazy-apache comparison (issue 17; README.md, "Lazy pull: apache2's first answer"): time
// from the start of a pull to apache2 of bench image c0 answering its first HTTP request, then
// of the update c1 pulled after c0 into the same installation, for kura pull --lazy, kura pull
// (whole image) and podman 4.3.1 (pull + run, zstd:chunked partial pulls as newPodmanEnv
// configures them), alternating, and the registry bytes each fetched until then (the
// registry's own access log). Kura's apache2 runs chrooted into the mount in a private mount
// namespace (tmpfs on /run, /var/log, /tmp), podman's in a container on the host's network;
// both get the base rootfs's apache2 and libapr bound in (the corpus patches them so that
// they crash from c1 on: als_step.go) and a ports.conf for a free loopback port. An untimed
// trace run per version then gives the files apache2 read: a lazy pull with the bulk fetch
// held back, whose start-up profile lists the files filled on demand.

// lazyApacheCfg is the -lazy-apache run.
type lazyApacheCfg struct {
	enabled  bool
	runs     int
	tools    string // comma-separated subset of kura-lazy, kura-full, podman
	mode     string // kura pull --lazy-mode
	preRead  bool   // read the mmap-first files before starting apache2 (fanotify's defect)
	versions string // the cold version, then the update
	// backgroundAfter, if set, is kura-lazy's --background-after in the timed rounds: the bulk
	// fetch starts then instead of after the start-up window (apache2 starts with it running).
	backgroundAfter string
	noTraces        bool // skip the untimed traces
}

// apacheCmd starts apache2 in the foreground the way apache2ctl would, without systemd.
// /run/lock first: /var/lock links to it, and mkdir -p fails on the dangling link.
const apacheCmd = `mkdir -p /run/lock && . /etc/apache2/envvars && mkdir -p "$APACHE_RUN_DIR" "$APACHE_LOCK_DIR" "$APACHE_LOG_DIR" && exec /usr/sbin/apache2 -DFOREGROUND`

// lazyStep is one timed step: one tool, one version, pull start to first answer.
type lazyStep struct {
	Tool    string  `json:"tool"`
	Version string  `json:"version"`
	Round   int     `json:"round"`
	Seconds float64 `json:"seconds"`
	// Pulled and Mounted are the seconds until the pull returned (podman: pull; lazy: the
	// "mountable" line) and until the mount was made (podman: the container created).
	Pulled  float64 `json:"pulled"`
	Mounted float64 `json:"mounted"`
	Bytes   int64   `json:"bytes"` // registry body bytes until the first answer
	Error   string  `json:"error,omitempty"`
}

// lazyTrace is what apache2 read from one version (untimed, bulk fetch held back).
type lazyTrace struct {
	Version   string   `json:"version"`
	Files     int      `json:"files"`     // regular files of the image opened until its first answer
	ReadBytes int64    `json:"readBytes"` // their sizes
	Filled    int      `json:"filled"`    // those that needed a fill (the start-up profile)
	Fetched   int64    `json:"fetched"`   // registry bytes until the first answer
	TOC       int64    `json:"toc"`       // the layer's compressed TOC
	TarSplit  int64    `json:"tarSplit"`  // and tar-split (fetched too)
	Paths     []string `json:"paths"`
	Error     string   `json:"error,omitempty"`
}

// lazyResults is lazy-apache.json.
type lazyResults struct {
	Started  time.Time   `json:"started"`
	Finished time.Time   `json:"finished"`
	Tools    []string    `json:"tools"`
	Mode     string      `json:"lazyMode"`
	PreRead  bool        `json:"preRead"`
	Steps    []lazyStep  `json:"steps"`
	Traces   []lazyTrace `json:"traces"`
	Load     []string    `json:"load"`
}

// lazyBench is the running comparison's shared state.
type lazyBench struct {
	cfg     config
	la      lazyApacheCfg
	base    string // the base rootfs (pristine apache2, libapr)
	regAddr string
	alog    *accessLog
	root    string
	ports   string // ports.conf bound into every apache2
	port    int
	// used are the installations' directories, removed only once the run is over: on a file
	// system without a journal (this machine's root), ext4 skips the inodes freed in the last
	// minute when it allocates new ones, one by one, so a new installation made right after
	// the last one was removed creates each file in time proportional to the files just
	// removed, for every tool (it took a lazy pull's 7,446 placeholders from 0.2 to 3.5 s).
	used []string
}

func runLazyApache(ctx context.Context, cfg config, la lazyApacheCfg) error {
	if cfg.kura == "" {
		return errors.New("-lazy-apache needs -kura")
	}
	base, err := ensureRootfs(ctx, cfg)
	if err != nil {
		return err
	}
	regRoot := filepath.Join(cfg.work, "registry-full")
	if _, err := os.Stat(filepath.Join(regRoot, "pushed-kura.json")); err != nil {
		return fmt.Errorf("-lazy-apache pulls Kura's pushes of the corpus; run the main bench first: %w", err)
	}
	reg, err := startRegistry(ctx, regRoot, false)
	if err != nil {
		return err
	}
	defer reg.Stop()
	b := &lazyBench{cfg: cfg, la: la, base: base, regAddr: reg.Addr, alog: newAccessLog(reg.Log, reg.Addr),
		root: filepath.Join(cfg.work, "lazy-apache")}
	if err := b.writePorts(); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	defer b.removeInstalls()
	tools := strings.Split(la.tools, ",")
	res := &lazyResults{Started: time.Now(), Tools: tools, Mode: la.mode, PreRead: la.preRead}
	settle := false
	for i := 0; i < la.runs && ctx.Err() == nil; i++ {
		res.Load = append(res.Load, loadAvg())
		for j := range tools {
			tool := tools[(i+j)%len(tools)] // rotate the order each round
			if settle {
				if err := settleRemovals(ctx); err != nil {
					return err
				}
			}
			res.Steps = append(res.Steps, b.toolRound(ctx, tool, i+1)...)
			// A completed lazy pull removed its placeholders (thousands of inodes): the next
			// installation must not pay for them (see settleRemovals).
			settle = tool == "kura-lazy"
		}
	}
	for _, v := range strings.Split(la.versions, ",") {
		if la.noTraces {
			break
		}
		res.Traces = append(res.Traces, b.trace(ctx, v))
	}
	res.Load = append(res.Load, loadAvg())
	res.Finished = time.Now()
	return writeLazyResults(cfg, res)
}

// writePorts makes the apache2 configuration override: listen on a free loopback port only.
func (b *lazyBench) writePorts() error {
	if err := os.MkdirAll(b.root, 0o755); err != nil {
		return err
	}
	var err error
	b.port, b.ports, err = writeApachePorts(b.root)
	return err
}

func (b *lazyBench) ref(version string) string { return b.regAddr + "/" + kuraRepo + ":" + version }

// toolRound is one tool's round: a new installation, the cold version, then the update.
func (b *lazyBench) toolRound(ctx context.Context, tool string, round int) []lazyStep {
	dir := filepath.Join(b.root, fmt.Sprintf("run-%d-%s", round, tool))
	inst, err := b.newInstall(dir, tool)
	var steps []lazyStep
	if err != nil {
		return append(steps, lazyStep{Tool: tool, Round: round, Error: err.Error()})
	}
	defer inst.close(b)
	for _, v := range strings.Split(b.la.versions, ",") {
		s := b.timedStep(ctx, inst, v)
		s.Tool, s.Round = tool, round
		log.Printf("lazy-apache round %d %s %s: %.2f s (pulled %.2f, mounted %.2f), %.2f MB fetched %s", round, tool, v, s.Seconds, s.Pulled, s.Mounted, float64(s.Bytes)/1e6, s.Error)
		steps = append(steps, s)
		if s.Error != "" {
			break
		}
	}
	return steps
}

// timedStep pulls and starts one version and times its first answer; then it stops apache2
// and, for a lazy pull, waits (untimed) until the pull completed.
func (b *lazyBench) timedStep(ctx context.Context, inst *install, version string) lazyStep {
	s := lazyStep{Version: version}
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil { // untimed, as in pairs.go
		s.Error = "sync: " + err.Error()
		return s
	}
	mark, err := b.alog.Mark(ctx)
	if err != nil {
		s.Error = err.Error()
		return s
	}
	var extra []string // kura-lazy's only: the others ignore it
	if b.la.backgroundAfter != "" {
		extra = []string{"--background-after", b.la.backgroundAfter}
	}
	start := time.Now()
	run, err := inst.start(ctx, b, version, extra...)
	if run != nil {
		s.Pulled, s.Mounted = run.pulled.Sub(start).Seconds(), run.mounted.Sub(start).Seconds()
	}
	if err == nil {
		err = waitFirstAnswer(ctx, fmt.Sprintf("http://127.0.0.1:%d/", b.port), 3*time.Minute, run.exited)
	}
	s.Seconds = time.Since(start).Seconds()
	if reqs, lerr := b.alog.Since(ctx, mark); lerr == nil {
		for _, q := range reqs {
			s.Bytes += q.Received
		}
	} else if err == nil {
		err = lerr
	}
	if run != nil {
		if cerr := run.finish(); err == nil {
			err = cerr
		}
	}
	if err != nil {
		s.Error = err.Error()
	}
	return s
}

func writeLazyResults(cfg config, res *lazyResults) error {
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	js, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "lazy-apache.json"), js, 0o644); err != nil {
		return err
	}
	f, err := os.Create(filepath.Join(cfg.out, "lazy-apache.md"))
	if err != nil {
		return err
	}
	defer f.Close()
	printLazySummary(io.MultiWriter(f, os.Stdout), res)
	return nil
}

// waitFirstAnswer polls u until it answers 200: the first HTTP answer of the container.
func waitFirstAnswer(ctx context.Context, u string, limit time.Duration, exited <-chan struct{}) error {
	client := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
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
		case <-time.After(5 * time.Millisecond): // polling the server under test
		}
	}
	return fmt.Errorf("%s did not answer within %v", u, limit)
}

// lineWaiter reads a kura command's stdout and tells when a line containing a word came.
type lineWaiter struct {
	lines chan string
	seen  []string // lines consumed by earlier waits
}

func newLineWaiter(r io.Reader) *lineWaiter {
	w := &lineWaiter{lines: make(chan string, 16)}
	go func() {
		sc := bufio.NewScanner(r)
		for sc.Scan() {
			w.lines <- sc.Text()
		}
		close(w.lines)
	}()
	return w
}

// kura pull --lazy's lines: "<id> mountable as NAME ... until complete", then "<id> complete".
func isMountable(line string) bool { return strings.Contains(line, " mountable as ") }
func isComplete(line string) bool {
	f := strings.Fields(line)
	return len(f) == 2 && f[1] == "complete"
}

// wait returns once a line matching word came, or fails when the output ends or limit passes.
func (w *lineWaiter) wait(word func(string) bool, limit time.Duration) error {
	for _, line := range w.seen {
		if word(line) {
			return nil
		}
	}
	timer := time.NewTimer(limit)
	defer timer.Stop()
	for {
		select {
		case line, ok := <-w.lines:
			if !ok {
				return fmt.Errorf("the command ended before the line awaited (it said %q)", w.seen)
			}
			w.seen = append(w.seen, line)
			if word(line) {
				return nil
			}
		case <-timer.C:
			return fmt.Errorf("no line awaited within %v (it said %q)", limit, w.seen)
		}
	}
}
