// Command bench measures what pulling, storing and running ten versions of
// one application image costs: bytes over the wire per pull, wall time, disk
// after N versions and page cache used by ten containers, for podman 4.3.1
// (zstd:chunked partial pulls, with and without hard links) and for kura,
// against the same local registry in the same run, next to the floor (the
// compressed bytes of the files really new in each version).
//
// It owns the whole run: corpus, registry, counting proxy (untimed passes
// only), timed pulls straight to the registry (alternating tools, bytes from
// the registry's access log), baselines, report. See README.md for what each
// figure means.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// config is the run's parameters, all defaults in one place.
type config struct {
	work     string // large scratch: rootfs cache, corpus, registry, stores
	out      string // small results: JSON, Markdown, PNG
	versions int
	quick    bool
	mirror   string
	kura     string // kura binary; empty or unusable means the kura hooks are skipped
	readSet  []string
	keep     bool // keep stores after the run (for inspection)

	freshRegistry bool          // push again even if the registry holds this corpus
	kuraBudget    time.Duration // wall time allowed for all kura steps
	pairs         int           // rounds of fresh stores in the timed comparison
	pairsBudget   time.Duration // wall time allowed for the timed comparison

	containerd bool     // run only the containerd comparison (ctdbench.go)
	ctdRounds  int      // rounds of fresh containerds in it
	ctdProfile string   // kura snapshotter CPU profile file prefix (one per round)
	ctdSetups  []string // set-ups compared, the first the baseline of the ratios
	stargzGrpc string   // stargz-snapshotter daemon (bench/cmd/stargz-grpc), for the stargz set-up
}

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("bench: ")
	cfg := config{readSet: []string{"/usr/lib", "/usr/sbin"}}
	flag.StringVar(&cfg.work, "work", "/var/tmp/kura-bench", "scratch directory (several GB)")
	flag.StringVar(&cfg.out, "out", "out", "directory for results.json, results.md, chart.png")
	flag.IntVar(&cfg.versions, "versions", 0, "number of image versions (default 10, 3 with -quick)")
	flag.BoolVar(&cfg.quick, "quick", false, "smoke test: fewer versions, smaller application")
	flag.StringVar(&cfg.mirror, "mirror", "http://deb.debian.org/debian", "Debian mirror for debootstrap")
	flag.StringVar(&cfg.kura, "kura", "", "kura binary (hooks are skipped when it lacks pull/push/mount)")
	flag.BoolVar(&cfg.keep, "keep", false, "keep registry and stores in the work dir after the run")
	flag.DurationVar(&cfg.kuraBudget, "kura-budget", 15*time.Minute, "wall time allowed for all kura steps (keeps the run bounded)")
	flag.IntVar(&cfg.pairs, "pairs", 5, "rounds of the timed kura/podman comparison (each: new stores, every version)")
	flag.DurationVar(&cfg.pairsBudget, "pairs-budget", 20*time.Minute, "wall time allowed for the timed comparison")
	flag.BoolVar(&cfg.freshRegistry, "fresh-registry", false, "wipe the registry and push again even if it holds this corpus")
	flag.BoolVar(&cfg.containerd, "containerd", false, "run only the containerd comparison: overlayfs against Kura's snapshotter, through the CRI API (needs the registry of an earlier run)")
	flag.IntVar(&cfg.ctdRounds, "ctd-rounds", 5, "rounds of the containerd comparison (each: fresh daemons, every version on both)")
	ctdSetups := flag.String("ctd-setups", "overlayfs,kura", "set-ups of the containerd comparison, the first the baseline of the ratios: overlayfs, kura, kura-lazy (kura snapshotter --lazy), stargz (stargz-snapshotter on the versions converted to eStargz; needs -stargz-grpc)")
	flag.StringVar(&cfg.stargzGrpc, "stargz-grpc", "", "stargz-snapshotter daemon binary (go build ./cmd/stargz-grpc in bench/)")
	flag.StringVar(&cfg.ctdProfile, "ctd-kura-profile", "", "write the kura snapshotter's CPU profile to this path plus .roundN")
	als := flag.Bool("als", false, "only the layer-store comparison (issue 15): podman with Kura as its additional layer store against podman alone; needs -kura and Kura's pushes in the registry (README.md)")
	alsRounds := flag.Int("als-rounds", 5, "rounds of the -als comparison (each: new installations, every version)")
	reportOnly := flag.Bool("report-only", false, "only redraw results.md and chart.png from results.json in -out (with -containerd: containerd.md from containerd.json)")
	scale := scaleFlags()
	var la lazyApacheCfg
	flag.BoolVar(&la.enabled, "lazy-apache", false, "run only the lazy-pull comparison (issue 17): kura pull --lazy, kura pull and podman pull+run of bench/kura:c0 then c1 until apache2 answers; needs -kura and Kura's pushes in the registry (README.md)")
	flag.IntVar(&la.runs, "lazy-apache-runs", 5, "rounds of the lazy-pull comparison (each tool: a new installation, c0 then c1)")
	flag.StringVar(&la.tools, "lazy-apache-tools", "kura-lazy,kura-full,podman", "tools of the lazy-pull comparison, in the order of the first round (rotated each round)")
	flag.StringVar(&la.mode, "lazy-apache-mode", "fanotify", "kura pull --lazy-mode of the lazy-pull comparison (fanotify, fuse, auto)")
	flag.BoolVar(&la.preRead, "lazy-apache-preread", false, "read the files apache2's start-up maps first before starting it (fanotify mode without fill at mmap)")
	flag.StringVar(&la.versions, "lazy-apache-versions", "c0,c1", "the cold version, then the update pulled after it")
	flag.StringVar(&la.backgroundAfter, "lazy-apache-background-after", "", "kura-lazy's --background-after in the timed rounds (e.g. 1ms: apache2 starts while the bulk fetch runs; default: the start-up window)")
	flag.BoolVar(&la.noTraces, "lazy-apache-no-traces", false, "skip the untimed traces of the files apache2 reads")
	flag.Parse()
	if la.enabled {
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		err := runLazyApache(ctx, cfg, la)
		stop()
		if err != nil {
			log.Fatal(err)
		}
		return
	}
	if scale.enabled {
		runScaleMain(cfg, scale)
		return
	}
	if *reportOnly && cfg.containerd {
		if err := rewriteCtdReport(cfg); err != nil {
			log.Fatal(err)
		}
		return
	}
	if *reportOnly {
		if err := rewriteReport(cfg); err != nil {
			log.Fatal(err)
		}
		return
	}
	if cfg.versions == 0 {
		cfg.versions = 10
		if cfg.quick {
			cfg.versions = 3
		}
	}
	if *als && cfg.versions != 10 {
		log.Fatal("-als runs on the ten-version corpus")
	}
	if cfg.versions < 2 || cfg.versions > 50 {
		log.Fatalf("-versions %d: want 2..50", cfg.versions)
	}
	if os.Geteuid() != 0 {
		log.Fatal("must run as root (debootstrap, podman storage, drop_caches, mounts)")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *als {
		if err := runALS(ctx, cfg, *alsRounds); err != nil {
			log.Fatal(err)
		}
		return
	}
	if cfg.containerd {
		cfg.ctdSetups = strings.Split(*ctdSetups, ",")
		if err := runContainerdBench(ctx, cfg); err != nil {
			log.Fatal(err)
		}
		return
	}
	if err := run(ctx, cfg); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, cfg config) error {
	start := time.Now()
	for _, d := range []string{cfg.work, cfg.out} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	res := &Results{Started: start, Quick: cfg.quick, ReadSet: cfg.readSet}
	res.Tools = toolVersions()

	base, err := ensureRootfs(ctx, cfg)
	if err != nil {
		return err
	}
	corpus, err := buildCorpus(ctx, cfg, base)
	if err != nil {
		return err
	}
	res.Versions = corpus.summaries()
	if corpus.ReadSets, err = analyseReadSets(cfg, corpus); err != nil {
		return fmt.Errorf("analysing read sets: %w", err)
	}
	res.ReadSets = corpus.ReadSets
	res.Phases = append(res.Phases, phase("corpus ready", start))

	regRoot := filepath.Join(cfg.work, "registry-"+corpus.Kind)
	cached, cacheErr := loadPushCache(regRoot, corpus)
	if cfg.freshRegistry || cacheErr != nil {
		cached = nil
	}
	reg, err := startRegistry(ctx, regRoot, cached == nil)
	if err != nil {
		return err
	}
	defer reg.Stop()
	proxy, err := startProxy(reg.Addr)
	if err != nil {
		return err
	}
	defer proxy.Close()
	log.Printf("registry %s behind counting proxy %s", reg.Addr, proxy.Addr)

	if cached != nil {
		log.Printf("push: reusing skopeo's pushes from %s (same corpus); -fresh-registry pushes again", cached.When.Format(time.RFC3339))
		res.Push, res.PushUploaded, res.PushSeconds = cached.Push, cached.Uploaded, cached.Seconds
		res.PushReusedFrom = &cached.When
		if err := refreshLayerInfo(ctx, proxy.Addr, appRepo, res.Push); err != nil {
			return err
		}
	} else {
		pushStart := time.Now()
		push, pushTraffic, err := skopeoPushAll(ctx, corpus, proxy)
		if err != nil {
			return err
		}
		res.Push, res.PushUploaded, res.PushSeconds = push, pushTraffic.Uploaded, time.Since(pushStart).Seconds()
		if err := savePushCache(regRoot, corpus, res); err != nil {
			return err
		}
	}
	res.Phases = append(res.Phases, phase("skopeo push done", start))

	for _, hardLinks := range []bool{false, true} {
		sys, err := runPodman(ctx, cfg, corpus, proxy, hardLinks)
		if err != nil {
			return err
		}
		res.Systems = append(res.Systems, *sys)
		res.Phases = append(res.Phases, phase(sys.Name+" done", start))
		writePartial(cfg, res, start)
	}

	kuraCtx, cancel := context.WithTimeout(ctx, cfg.kuraBudget)
	kuraSys := runKura(kuraCtx, cfg, corpus, proxy, regRoot)
	if kuraCtx.Err() == context.DeadlineExceeded {
		kuraSys.Notes = append(kuraSys.Notes, fmt.Sprintf("kura steps stopped after the %s budget (-kura-budget)", cfg.kuraBudget))
	}
	cancel()
	res.Systems = append(res.Systems, *kuraSys)
	res.Phases = append(res.Phases, phase("kura hooks done", start))

	runTimed(ctx, cfg, corpus, reg, kuraSys, res, start)
	res.Phases = append(res.Phases, phase("cold pulls done", start))

	res.Finished = time.Now()
	res.TotalSeconds = time.Since(start).Seconds()
	proxy.Close()
	reg.Stop()
	if !cfg.keep {
		cleanupStores(cfg)
	}
	return writeReport(cfg, res)
}

// writePartial saves what is known so far, so an interrupted run still
// leaves figures behind.
func writePartial(cfg config, res *Results, start time.Time) {
	res.TotalSeconds = time.Since(start).Seconds()
	if err := writeReport(cfg, res); err != nil {
		log.Printf("writing partial results: %v", err)
	}
}

func phase(name string, start time.Time) Phase {
	log.Printf("== %s (%.0fs)", name, time.Since(start).Seconds())
	return Phase{Name: name, Seconds: time.Since(start).Seconds()}
}

// toolVersions records what was measured, since figures depend on versions.
func toolVersions() map[string]string {
	out := map[string]string{}
	for name, args := range map[string][]string{
		"podman":   {"podman", "--version"},
		"skopeo":   {"skopeo", "--version"},
		"runc":     {"runc", "--version"},
		"kernel":   {"uname", "-r"},
		"registry": {"dpkg-query", "-W", "-f", "${Version}", "docker-registry"},
	} {
		b, err := exec.Command(args[0], args[1:]...).Output()
		if err != nil {
			out[name] = fmt.Sprintf("unknown (%v)", err)
			continue
		}
		out[name] = firstLine(string(b))
	}
	return out
}

func firstLine(s string) string {
	for i, c := range s {
		if c == '\n' {
			return s[:i]
		}
	}
	return s
}

// runTimed takes the timed figures, with no proxy in the path (the
// registry's access log counts the bytes): the alternating pairs when kura
// pulled, then the cold pulls with skopeo, each bounded by a budget.
func runTimed(ctx context.Context, cfg config, corpus *Corpus, reg *registry, kuraSys *SystemResult, res *Results, start time.Time) {
	alog := newAccessLog(reg.Log, reg.Addr)
	kuraRef := ""
	if !kuraSys.Skipped && kuraSys.Repo != "" && len(kuraSys.Pulls) > 0 && kuraSys.Pulls[0].Error == "" {
		kuraRef = reg.Addr + "/" + kuraSys.Repo + ":" + corpus.Versions[0].Name
		pairsCtx, cancel := context.WithTimeout(ctx, cfg.pairsBudget)
		res.Pairs = runPairs(pairsCtx, cfg, corpus, reg, alog, kuraSys.Repo, cfg.pairs)
		if pairsCtx.Err() == context.DeadlineExceeded {
			res.Pairs.Notes = append(res.Pairs.Notes, fmt.Sprintf("stopped after the %s budget (-pairs-budget)", cfg.pairsBudget))
		}
		cancel()
		res.Phases = append(res.Phases, phase("timed pairs done", start))
		writePartial(cfg, res, start)
	}
	coldCtx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	res.ColdPulls = runColdPulls(coldCtx, cfg, corpus, reg, alog, kuraRef)
	cancel()
}
