package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
)

// CtdResults is the containerd comparison (-containerd): two private
// containerd 1.6 daemons with their CRI plugin, one on its overlayfs
// snapshotter, one on Kura's, driven through the CRI API on the same
// images, in rounds of fresh daemons.
type CtdResults struct {
	Started      time.Time         `json:"started"`
	Setups       []string          `json:"setups,omitempty"` // the first is the ratios' baseline; empty: overlayfs, kura
	Tools        map[string]string `json:"tools"`
	Load         []string          `json:"load"` // /proc/loadavg at the start of each round and at the end
	Repo         string            `json:"repo"`
	Versions     []string          `json:"versions"`
	Rounds       int               `json:"rounds"`
	ReadSet      []string          `json:"readSet"`
	Starts       []CtdStart        `json:"starts"`
	Disk         []CtdDisk         `json:"disk"`
	PageCache    []CtdPageCache    `json:"pageCache"`
	Notes        []string          `json:"notes,omitempty"`
	TotalSeconds float64           `json:"totalSeconds"`
}

// CtdDisk is a setup's disk use after every version was pulled and runs.
type CtdDisk struct {
	Setup string           `json:"setup"`
	Round int              `json:"round"`
	Total int64            `json:"total"` // all parts together, hard links once
	Parts map[string]int64 `json:"parts"`
	Error string           `json:"error,omitempty"`
}

// CtdPageCache is the page cache that the setup's running containers (one per
// version) add when each reads the read set, from dropped caches.
type CtdPageCache struct {
	Setup      string `json:"setup"`
	Round      int    `json:"round"`
	Containers int    `json:"containers"`
	// CachedDelta: /proc/meminfo Cached growth while every container reads;
	// Overhead: the same with every container running `true` (the exec's
	// own cost); Resident: mincore over the snapshotter's files (containerd's
	// overlayfs snapshot directories; Kura's store and composefs images).
	CachedDelta int64 `json:"cachedDelta"`
	// Charged: growth of the page cache charged to the containers' memory
	// cgroups (memory.stat cache, v1; file, v2) while they read: a page is
	// charged to the cgroup that brings it in, so this counts exactly the
	// pages the ten readers brought in, whatever else the machine does.
	Charged    int64            `json:"charged"`
	Overhead   int64            `json:"overhead"`
	Resident   int64            `json:"resident"`
	ResidentBy map[string]int64 `json:"residentBy"`
	Error      string           `json:"error,omitempty"`
}

func loadAvg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return time.Now().UTC().Format("15:04:05") + " " + strings.TrimSpace(string(b))
}

// runContainerdBench is the -containerd run: it needs the registry content
// of an earlier full run (kura's pushes, which both containerds pull: the
// same zstd:chunked blobs with tar-split, so Kura can pull them partially
// and containerd's overlayfs snapshotter applies them as zstd).
func runContainerdBench(ctx context.Context, cfg config) error {
	start := time.Now()
	kind := "full"
	if cfg.quick {
		kind = "quick"
	}
	regRoot := filepath.Join(cfg.work, "registry-"+kind)
	if err := os.MkdirAll(filepath.Join(cfg.out, "ctd-logs"), 0o755); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(regRoot, "pushed-kura.json")); err != nil {
		return fmt.Errorf("-containerd needs kura's pushes in %s (run bench/run.sh first): %w", regRoot, err)
	}
	if err := checkCtdSetups(cfg); err != nil {
		return err
	}
	res := &CtdResults{Started: start, Setups: cfg.ctdSetups, Repo: kuraRepo, Rounds: cfg.ctdRounds, ReadSet: cfg.readSet, Tools: toolVersions()}
	if b, err := exec.Command("containerd", "--version").Output(); err == nil {
		res.Tools["containerd"] = firstLine(string(b))
	}
	for v := range cfg.versions {
		res.Versions = append(res.Versions, fmt.Sprintf("c%d", v))
	}
	reg, err := startRegistry(ctx, regRoot, false)
	if err != nil {
		return err
	}
	defer reg.Stop()
	work := filepath.Join(cfg.work, "ctd")
	if slices.Contains(cfg.ctdSetups, ctdStargz) {
		if err := ensureEstargz(ctx, regRoot, reg.Addr, filepath.Join(cfg.work, "estargz-tmp"), res.Versions); err != nil {
			return err
		}
		res.Tools["stargz-snapshotter"] = "v0.19.1 (library module, bench/cmd/stargz-grpc)"
	}
	pauseRef, err := pushPauseImage(ctx, cfg.work, reg.Addr)
	if err != nil {
		return err
	}
	alog := newAccessLog(reg.Log, reg.Addr)
	runDir := fmt.Sprintf("/run/kura-bench-ctd-%d", os.Getpid())
	defer removeTree(runDir)
	for round := 1; round <= cfg.ctdRounds && ctx.Err() == nil; round++ {
		res.Load = append(res.Load, loadAvg())
		if err := runCtdRound(ctx, cfg, res, round, work, runDir, reg.Addr, pauseRef, alog); err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("round %d: %v", round, err))
			log.Printf("containerd round %d: %v", round, err)
		}
		res.TotalSeconds = time.Since(start).Seconds()
		if err := writeCtdReport(cfg, res); err != nil {
			return err
		}
		if round < cfg.ctdRounds {
			if err := settleRemovals(ctx); err != nil {
				return err
			}
		}
	}
	res.Load = append(res.Load, loadAvg())
	res.TotalSeconds = time.Since(start).Seconds()
	_ = removeTree(work)
	return writeCtdReport(cfg, res)
}

// checkCtdSetups checks the -ctd-setups names and the binaries they need.
func checkCtdSetups(cfg config) error {
	for _, name := range cfg.ctdSetups {
		switch name {
		case ctdOverlay:
		case ctdKura, ctdKuraLazy:
			if cfg.kura == "" || !kuraHas(cfg.kura, "snapshotter") {
				return fmt.Errorf("-containerd needs a kura binary with the snapshotter command (-kura %q)", cfg.kura)
			}
		case ctdStargz:
			if cfg.stargzGrpc == "" {
				return fmt.Errorf("-ctd-setups %s needs -stargz-grpc (go build ./cmd/stargz-grpc in bench/)", name)
			}
		default:
			return fmt.Errorf("-ctd-setups: unknown set-up %q (overlayfs, kura, kura-lazy, stargz)", name)
		}
	}
	if len(cfg.ctdSetups) < 2 {
		return fmt.Errorf("-ctd-setups %v: want two set-ups or more", cfg.ctdSetups)
	}
	return nil
}

// runCtdRound starts both setups afresh, runs every version on each (the
// setup that goes first alternating with the version and the round), then
// takes the disk and page-cache figures of both, and removes everything.
func runCtdRound(ctx context.Context, cfg config, res *CtdResults, round int, work, runDir, regAddr, pauseRef string, alog *accessLog) error {
	// Each round in directories of its own, all removed once the run is over: see
	// ctdSetup.stop.
	work = filepath.Join(work, fmt.Sprint("round-", round))
	runDir = filepath.Join(runDir, fmt.Sprint("round-", round))
	var setups []*ctdSetup
	defer func() {
		for _, s := range setups {
			for _, e := range s.stop() {
				res.Notes = append(res.Notes, fmt.Sprintf("round %d cleanup: %s", round, e))
			}
		}
	}()
	for _, name := range cfg.ctdSetups {
		var extra []string
		if snapshotterOf(name) == ctdKura && cfg.ctdProfile != "" {
			extra = []string{"--cpu-profile", fmt.Sprintf("%s.round%d", cfg.ctdProfile, round)}
		}
		s, err := startCtdSetup(ctx, cfg, name, work, runDir, regAddr, pauseRef, extra)
		if s != nil {
			s.keepLogs += fmt.Sprintf("-round%d", round)
			setups = append(setups, s)
		}
		if err != nil {
			return err
		}
	}
	for i, v := range res.Versions {
		for _, repo := range reposOf(cfg.ctdSetups) {
			if err := warmBlobs(ctx, regAddr, repo, v); err != nil {
				return err
			}
		}
		for j := range setups {
			s := setups[pairOrder(round, i, j, len(setups))]
			st := s.startVersion(ctx, alog, regAddr+"/"+repoOf(s.name)+":"+v, v)
			st.Round, st.First = round, j == 0
			log.Printf("containerd round %d %s %-9s: pull %.2fs, to first answer %.2fs, received %.2f MB %v %s",
				round, v, s.name, st.PullSeconds, st.Seconds, mb(st.Traffic.Received), st.ByAgent, st.Error)
			res.Starts = append(res.Starts, st)
		}
	}
	for j := range setups {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		s := setups[(round+j)%len(setups)]
		res.Disk = append(res.Disk, s.disk(round))
		pc := s.pageCache(ctx, round, cfg.readSet)
		log.Printf("containerd round %d %s: page cache +%.1f MB (exec alone +%.1f MB), charged to the containers %.1f MB, resident %.1f MB %v %s",
			round, s.name, mb(pc.CachedDelta), mb(pc.Overhead), mb(pc.Charged), mb(pc.Resident), pc.ResidentBy, pc.Error)
		res.PageCache = append(res.PageCache, pc)
	}
	return nil
}

// reposOf is the repositories the set-ups pull, each once.
func reposOf(setups []string) []string {
	var repos []string
	for _, s := range setups {
		if r := repoOf(s); !slices.Contains(repos, r) {
			repos = append(repos, r)
		}
	}
	return repos
}

// disk measures the setup's directories, together and each alone.
func (s *ctdSetup) disk(round int) CtdDisk {
	d := CtdDisk{Setup: s.name, Round: round, Parts: map[string]int64{}}
	var all []string
	for name, dir := range s.diskDirs() {
		n, err := duTotal([]string{dir})
		if err != nil {
			d.Error = err.Error()
		}
		d.Parts[name] = n
		all = append(all, dir)
	}
	var err error
	if d.Total, err = duTotal(all); err != nil {
		d.Error = err.Error()
	}
	log.Printf("containerd round %d %s: disk %.1f MB %v", round, s.name, mb(d.Total), d.Parts)
	return d
}

// pageCache drops the page cache and has every running container read the
// read set (find | xargs cat, as the podman page-cache containers do); the
// same with `true` gives the exec's own cost.
func (s *ctdSetup) pageCache(ctx context.Context, round int, readSet []string) CtdPageCache {
	pc := CtdPageCache{Setup: s.name, Round: round, Containers: len(s.ctrs)}
	read := []string{"sh", "-c", "find " + strings.Join(readSet, " ") + " -type f -print0 | xargs -0 cat > /dev/null"}
	var err error
	if pc.Overhead, err = cachedDelta(func() error { return s.execAll(ctx, []string{"true"}) }); err != nil {
		pc.Error = err.Error()
		return pc
	}
	var before int64
	if pc.CachedDelta, err = cachedDelta(func() error {
		if before, err = s.cgroupCache(); err != nil {
			return err
		}
		return s.execAll(ctx, read)
	}); err != nil {
		pc.Error = err.Error()
		return pc
	}
	after, err := s.cgroupCache()
	if err != nil {
		pc.Error = err.Error()
		return pc
	}
	pc.Charged = after - before
	pc.ResidentBy = map[string]int64{}
	for part, root := range s.residentRoots() {
		n, err := residentBytes(root)
		if err != nil {
			pc.Error = err.Error()
		}
		pc.Resident += n
		pc.ResidentBy[part] = n
	}
	return pc
}

// cgroupCache sums the page cache charged to the setup's containers' memory
// cgroups (the CRI plugin puts each in /k8s.io/ID with cgroupfs).
func (s *ctdSetup) cgroupCache() (int64, error) {
	var sum int64
	for _, id := range s.ctrs {
		n, err := cgroupStat(id)
		if err != nil {
			return 0, err
		}
		sum += n
	}
	return sum, nil
}

// cgroupStat is the page cache of one cgroup: "cache" of cgroup v1's
// memory.stat, else "file" of cgroup v2's.
func cgroupStat(id string) (int64, error) {
	for _, c := range []struct{ path, key string }{
		{"/sys/fs/cgroup/memory/k8s.io/" + id + "/memory.stat", "cache"},
		{"/sys/fs/cgroup/k8s.io/" + id + "/memory.stat", "file"},
	} {
		b, err := os.ReadFile(c.path)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, c.key+" "); ok {
				var n int64
				_, err := fmt.Sscan(v, &n)
				return n, err
			}
		}
	}
	return 0, fmt.Errorf("no memory cgroup for container %s", id)
}

// warmBlobs reads a version's manifest and blobs from the registry before
// the two setups pull it, so that neither pays for the registry's disk
// reads: the one going first would, whichever it is (untimed, before the
// access-log mark).
func warmBlobs(ctx context.Context, regAddr, repo, tag string) error {
	var m ocispec.Manifest
	if err := regJSON(ctx, regAddr, repo, "/manifests/"+tag, &m); err != nil {
		return fmt.Errorf("warming the registry: manifest of %s: %w", tag, err)
	}
	for _, d := range append([]ocispec.Descriptor{m.Config}, m.Layers...) {
		resp, err := regGet(ctx, regAddr, repo, "/blobs/"+d.Digest.String(), "")
		if err == nil {
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		if err != nil {
			return fmt.Errorf("warming the registry: %w", err)
		}
	}
	return nil
}

// residentRoots are the files whose pages are the snapshotter's: overlayfs's
// snapshot directories; Kura's store (objects) and composefs images (not
// the mount points: the walk would meet the same pages through the mounts).
func (s *ctdSetup) residentRoots() map[string]string {
	switch s.snap {
	case ctdKura:
		return map[string]string{"store": s.kuraStore, "composefs images": filepath.Join(s.kuraState, "layers", "composefs")}
	case ctdStargz:
		// Its layer cache (fetched chunks, on disk), not the FUSE mounts.
		return map[string]string{"stargz cache": filepath.Join(s.stargzRoot(), "stargz")}
	}
	return map[string]string{"snapshots": filepath.Join(s.root(), "io.containerd.snapshotter.v1.overlayfs")}
}

// rewriteCtdReport renders containerd.md again from containerd.json in the
// out directory (-containerd -report-only).
func rewriteCtdReport(cfg config) error {
	b, err := os.ReadFile(filepath.Join(cfg.out, "containerd.json"))
	if err != nil {
		return err
	}
	var res CtdResults
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("containerd.json: %w", err)
	}
	return os.WriteFile(filepath.Join(cfg.out, "containerd.md"), []byte(ctdMarkdown(&res)), 0o644)
}

// writeCtdReport writes containerd.json and containerd.md in the out directory.
func writeCtdReport(cfg config, res *CtdResults) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "containerd.json"), b, 0o644); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(cfg.out, "containerd.md"), []byte(ctdMarkdown(res)), 0o644)
}
