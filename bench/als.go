package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The -als mode (issue 15): podman 4.3.1 pulling and running the ten versions with Kura as its
// additional layer store (`kura layer-store serve`), side by side in one run with podman alone
// (zstd:chunked partial pulls on, hard links off and on). See README.md, "podman with Kura as
// its additional layer store".

// The three set-ups of the comparison, as they appear in the report.
const (
	alsKura = "podman + Kura layer store"
	// alsKuraCheckout is the layer store's other diff mode (hard-linked per-layer checkouts, as
	// podman's use_hard_links makes), measured for the page cache figures it trades disk for.
	alsKuraCheckout = "podman + Kura layer store --diff checkout"
	alsPodman       = "podman use_hard_links=false"
	alsPodmanHL     = "podman use_hard_links=true"
	alsUserAgent    = "kura" // Kura's requests carry a User-Agent starting with this
)

// alsTool is one set-up: which podman storage.conf, with or without the layer store.
type alsTool struct {
	name      string
	kura      bool
	diff      string // the server's --diff ("": its default, composefs on this kernel)
	hardLinks bool
}

var alsTools = []alsTool{{name: alsKura, kura: true}, {name: alsPodman}, {name: alsPodmanHL, hardLinks: true},
	{name: alsKuraCheckout, kura: true, diff: "checkout"}}

// ALSStep is one timed step: pull one version, then start apache2 from it until it answers.
type ALSStep struct {
	Tool    string  `json:"tool"`
	Version string  `json:"version"`
	Round   int     `json:"round"`
	First   bool    `json:"first"`   // went first among the tools for this version and round
	Pull    float64 `json:"pull"`    // seconds of podman pull
	Running float64 `json:"running"` // seconds from the start of the pull to apache2's first answer
	// Bytes is what the registry sent during the pull (access log); ByPodman the part of it
	// podman's own requests received (the rest went to Kura), PodmanBlobGets podman's GETs of
	// layer blobs (the config blob is a blob too; it is counted apart in ConfigGets).
	Bytes          int64  `json:"bytes"`
	ByPodman       int64  `json:"byPodman"`
	PodmanBlobGets int    `json:"podmanBlobGets"`
	PodmanBlobSize int64  `json:"podmanBlobBytes"`
	Page           string `json:"page,omitempty"` // the <title> apache2 served
	// Started is the wall clock at the start of the pull and Run the seconds from it to the
	// return of `podman run -d`: with the layer store's log (kept with -keep), the timeline of
	// a step.
	Started time.Time `json:"started"`
	Run     float64   `json:"run,omitempty"`
	Error   string    `json:"error,omitempty"`
}

// ALSSide is what one set-up holds after ten versions (first round).
type ALSSide struct {
	Tool      string   `json:"tool"`
	Disk      int64    `json:"disk"` // du -sbcx of podman's storage (+ Kura's store and state)
	DiskParts []string `json:"diskParts"`
	OSRelease string   `json:"osRelease,omitempty"`
	Error     string   `json:"error,omitempty"`
}

// ALSResults is the -als run (als.json).
type ALSResults struct {
	Started   time.Time         `json:"started"`
	Finished  time.Time         `json:"finished"`
	Tools     map[string]string `json:"tools"`
	Repo      string            `json:"repo"`
	Rounds    int               `json:"rounds"`
	Versions  []Version         `json:"versions"`
	Steps     []ALSStep         `json:"steps"`
	Sides     []ALSSide         `json:"sides"`
	PageCache []ALSPageCache    `json:"pageCache,omitempty"` // first round, two passes
	CommonSet *ReadSet          `json:"commonSet,omitempty"`
	Load      []string          `json:"load"` // /proc/loadavg at the start of each round and at the end
	Notes     []string          `json:"notes,omitempty"`
}

// runALS is the -als mode: the corpus and the registry the main run left (pushes are not made
// here: Kura's pushes must be in the registry), then rounds of the three set-ups.
func runALS(ctx context.Context, cfg config, rounds int) error {
	res := &ALSResults{Started: time.Now(), Tools: toolVersions(), Repo: kuraRepo, Rounds: rounds}
	if cfg.kura == "" {
		return errors.New("-als needs -kura")
	}
	if err := os.MkdirAll(cfg.out, 0o755); err != nil {
		return err
	}
	base, err := ensureRootfs(ctx, cfg)
	if err != nil {
		return err
	}
	corpus, err := buildCorpus(ctx, cfg, base)
	if err != nil {
		return err
	}
	if corpus.ReadSets, err = analyseReadSets(cfg, corpus); err != nil {
		return err
	}
	res.Versions, res.CommonSet = corpus.summaries(), corpus.commonSet()
	regRoot := filepath.Join(cfg.work, "registry-"+corpus.Kind)
	if _, err := loadPushCacheFile(filepath.Join(regRoot, "pushed-kura.json"), corpus); err != nil {
		return fmt.Errorf("-als pulls Kura's pushes of this corpus; run the main bench first: %w", err)
	}
	reg, err := startRegistry(ctx, regRoot, false)
	if err != nil {
		return err
	}
	defer reg.Stop()
	alog := newAccessLog(reg.Log, reg.Addr)
	root := filepath.Join(cfg.work, "als")
	// Each round's installations stay until the run is over (see lazyBench.used: on this
	// machine's journal-less ext4, files made right after many removals are slow to create).
	defer func() {
		if cfg.keep {
			log.Printf("als: -keep: leaving %s (the servers' logs: */server.log)", root)
			return
		}
		if err := removeTree(root); err != nil {
			log.Printf("als: removing %s: %v", root, err)
		}
	}()
	for r := 1; r <= rounds && ctx.Err() == nil; r++ {
		res.Load = append(res.Load, loadAvg())
		if err := alsRound(ctx, cfg, base, corpus, reg.Addr, alog, root, r, res); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("round %d: %v", r, err))
			log.Printf("als round %d: %v", r, err)
		}
		if err := writeALS(cfg, res); err != nil {
			return err
		}
	}
	res.Load = append(res.Load, loadAvg())
	res.Finished = time.Now()
	return writeALS(cfg, res)
}

// alsRound gives every set-up a new empty installation and pulls c0..c9 in order, the set-up
// that goes first rotating with the version and the round; after the first round's last
// version it takes the disk, the os-release check and the page cache (two passes, the second
// in the reverse order).
func alsRound(ctx context.Context, cfg config, base string, c *Corpus, regAddr string, alog *accessLog, root string, round int, res *ALSResults) error {
	envs := make([]*alsEnv, len(alsTools))
	defer func() {
		for _, e := range envs {
			if e != nil {
				e.close()
			}
		}
	}()
	for k, t := range alsTools {
		e, err := newALSEnv(cfg, base, filepath.Join(root, fmt.Sprintf("r%d-t%d", round, k)), t, regAddr)
		if err != nil {
			return fmt.Errorf("%s: %w", t.name, err)
		}
		envs[k] = e
	}
	for i, v := range c.Versions {
		if err := ctx.Err(); err != nil {
			return err
		}
		for j := range alsTools {
			k := pairOrder(round, i, j, len(alsTools))
			ref := regAddr + "/" + kuraRepo + ":" + v.Name
			s := envs[k].step(ctx, alog, ref, fmt.Sprintf("App 1.%d.0", i))
			s.Tool, s.Version, s.Round, s.First = alsTools[k].name, v.Name, round, j == 0
			log.Printf("als round %d %s %s: started %s, pull %.3fs, run -d %.3fs, running %.3fs, registry %.2f MB (podman %.2f MB, %d layer blob GETs) %s",
				round, v.Name, s.Tool, s.Started.Format("15:04:05.000"), s.Pull, s.Run, s.Running, mb(s.Bytes), mb(s.ByPodman), s.PodmanBlobGets, s.Error)
			res.Steps = append(res.Steps, s)
		}
	}
	if round == 1 {
		var refs []string
		for _, v := range c.Versions {
			refs = append(refs, regAddr+"/"+kuraRepo+":"+v.Name)
		}
		for _, e := range envs {
			res.Sides = append(res.Sides, e.side(ctx, refs[len(refs)-1]))
		}
		if common := c.commonSet(); common != nil {
			res.PageCache = alsPageCachePasses(ctx, envs, common, refs)
		}
	}
	return nil
}

// alsEnv is one set-up's installation for a round: a private podman (configured in its
// storage.conf only: podman 4.3.1 drops additionallayerstores when --root, --runroot or
// --storage-driver is on its command line) and, for Kura, a running layer store server.
type alsEnv struct {
	tool      alsTool
	pod       *podmanEnv
	dir       string
	base      string // the base rootfs, whose apache2 the containers run
	ports     string // ports.conf bound into the apache2 containers
	port      int
	server    *exec.Cmd
	serverErr chan error
}

func newALSEnv(cfg config, base, dir string, t alsTool, regAddr string) (*alsEnv, error) {
	pod, err := newPodmanEnv(dir, t.hardLinks, regAddr)
	if err != nil {
		return nil, err
	}
	e := &alsEnv{tool: t, pod: pod, dir: dir, base: base}
	if t.kura {
		if err := e.startServer(cfg, regAddr); err != nil {
			e.close()
			return nil, err
		}
		conf := filepath.Join(dir, "storage.conf")
		line := fmt.Sprintf("additionallayerstores = [%q]\n", filepath.Join(dir, "als")+":ref")
		if err := appendFile(conf, line); err != nil {
			e.close()
			return nil, err
		}
	}
	if err := e.writePorts(); err != nil {
		e.close()
		return nil, err
	}
	return e, nil
}

// startServer runs `kura layer-store serve` on dir/als with its store and state under dir (one
// file system: the composefs images and objects are counted in the disk figure) and waits for it
// to serve.
func (e *alsEnv) startServer(cfg config, regAddr string) error {
	regConf := filepath.Join(e.dir, "kura-registries.conf")
	if err := os.WriteFile(regConf, []byte(fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", regAddr)), 0o644); err != nil {
		return err
	}
	logf, err := os.Create(filepath.Join(e.dir, "server.log"))
	if err != nil {
		return err
	}
	cmd := exec.Command(cfg.kura, "--root", filepath.Join(e.dir, "store"), "--log-level", "info",
		"layer-store", "serve", filepath.Join(e.dir, "als"), "--state", filepath.Join(e.dir, "state"), "--registries-conf", regConf)
	if e.tool.diff != "" {
		cmd.Args = append(cmd.Args, "--diff", e.tool.diff)
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = logf, pw
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return err
	}
	e.server, e.serverErr = cmd, make(chan error, 1)
	ready := make(chan struct{})
	go func() {
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if strings.Contains(sc.Text(), "layer store serving") && ready != nil {
				close(ready)
				ready = nil
			}
		}
	}()
	go func() { err := cmd.Wait(); pw.Close(); e.serverErr <- err }()
	select {
	case <-ready:
		return nil
	case err := <-e.serverErr:
		e.server = nil
		return fmt.Errorf("kura layer-store serve exited: %v (log %s)", err, logf.Name())
	case <-time.After(time.Minute):
		return fmt.Errorf("kura layer-store serve did not start (log %s)", logf.Name())
	}
}

// writePorts makes the apache2 configuration override: listen on a free loopback port only
// (the containers use the host's network) with the default document root, the app's pages.
func (e *alsEnv) writePorts() (err error) {
	e.port, e.ports, err = writeApachePorts(e.dir)
	return err
}

// writeApachePorts writes dir/ports.conf, the apache2 configuration override of the -als and
// -lazy-apache runs: listen on a free loopback port only, with the default document root. It
// returns the port and the file.
func writeApachePorts(dir string) (int, string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, "", err
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	path := filepath.Join(dir, "ports.conf")
	conf := fmt.Sprintf("Listen 127.0.0.1:%d\n<VirtualHost 127.0.0.1:%d>\n\tDocumentRoot /var/www/html\n</VirtualHost>\n", port, port)
	return port, path, os.WriteFile(path, []byte(conf), 0o644)
}

// close stops what the set-up runs and unmounts what it mounted: containers and images' mounts,
// the server (SIGTERM: it unmounts its FUSE mount), the per-layer composefs mounts that outlive
// it. Its files stay until the run is over.
func (e *alsEnv) close() {
	_ = e.podman(context.Background(), "rm", "--all", "--force", "--time", "0").Run()
	if e.server != nil {
		_ = e.server.Process.Signal(syscall.SIGTERM)
		select {
		case <-e.serverErr:
		case <-time.After(30 * time.Second):
			_ = e.server.Process.Kill()
			<-e.serverErr
		}
	}
	if err := errors.Join(unmountTree(e.pod.dir), removeTree(e.pod.runroot)); err != nil {
		log.Printf("als: closing %s: %v", e.dir, err)
	}
}

// podman is a podman command of this set-up: its configuration through the environment only.
func (e *alsEnv) podman(ctx context.Context, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "podman", args...)
	cmd.Env = e.pod.env
	return cmd
}

func appendFile(path, s string) error {
	f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(s)
	return errors.Join(err, f.Close())
}

func writeALS(cfg config, res *ALSResults) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "als.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.out, "als.md"), []byte(alsReport(res)), 0o644)
}

// httpTitle GETs the page and returns its <title>.
func httpTitle(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	_, t, _ := strings.Cut(string(b), "<title>")
	t, _, _ = strings.Cut(t, "</title>")
	return t, nil
}
