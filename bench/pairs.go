package main

import (
	"bytes"
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"
)

// The tools of the timed comparison, as they appear in the report.
const (
	pairPodman = "podman pull -q (use_hard_links=true)"
	pairKura   = "kura pull"
)

// PairPull is one timed pull of the alternating comparison: a tool pulls one
// version into its own store, which holds exactly the earlier versions.
type PairPull struct {
	Tool    string  `json:"tool"`
	Version string  `json:"version"`
	Store   int     `json:"store"` // which independent pair of stores (1..)
	First   bool    `json:"first"` // pulled before the other tool's pull of the same version
	Seconds float64 `json:"seconds"`
	PeakRSS int64   `json:"peakRSS"` // bytes: GNU time's maximum resident set size
	// Traffic is what the registry's access log counted: Received and the
	// request counts (no "requested" figure: the log has no Range header).
	Traffic Traffic  `json:"traffic"`
	Agents  []string `json:"agents,omitempty"` // distinct User-Agents of its requests
	Error   string   `json:"error,omitempty"`
}

// Pairs is the timed comparison: Stores independent pairs of stores, each
// pulling every version in order, the tools alternating which goes first.
type Pairs struct {
	Repo   string     `json:"repo"` // the images both tools pulled
	Stores int        `json:"stores"`
	Pulls  []PairPull `json:"pulls"`
	Notes  []string   `json:"notes,omitempty"`
}

// pairTool is one puller of the comparison: a fresh store in dir, and the
// command line of one pull into it.
type pairTool struct {
	name  string
	setup func(dir string) (env []string, err error)
	pull  func(dir, ref string) []string
}

// runPairs measures the tools as users run them: straight to the registry
// (no proxy; bytes from the registry's access log), podman with its normal
// flags and no terminal, under GNU time for the peak RSS. For each of
// stores rounds, both tools get a new empty store and pull c0..cN in order,
// so version N is always pulled into a store holding exactly the versions
// before it (c0 is the cold pull). The tool that goes first alternates with
// the version and the round, so each version has stores/2 or more pairs in
// each order.
func runPairs(ctx context.Context, cfg config, c *Corpus, reg *registry, alog *accessLog, repo string, stores int) *Pairs {
	res := &Pairs{Repo: repo, Stores: stores}
	tools := []pairTool{podmanPairTool(reg.Addr), kuraPairTool(cfg.kura)}
	root := filepath.Join(cfg.work, "pairs")
	defer removeTree(root)
	for s := 1; s <= stores && ctx.Err() == nil; s++ {
		dirs := make([]string, len(tools))
		envs := make([][]string, len(tools))
		for k, t := range tools {
			dirs[k] = filepath.Join(root, fmt.Sprintf("store-%d-%d", s, k))
			env, err := t.setup(dirs[k])
			if err != nil {
				res.Notes = append(res.Notes, fmt.Sprintf("store %d, %s: %v", s, t.name, err))
				return res
			}
			envs[k] = env
		}
		for i, v := range c.Versions {
			for j := range tools {
				k := pairOrder(s, i, j, len(tools))
				ref := reg.Addr + "/" + repo + ":" + v.Name
				p := timedPull(ctx, alog, tools[k].pull(dirs[k], ref), envs[k])
				p.Tool, p.Version, p.Store, p.First = tools[k].name, v.Name, s, j == 0
				log.Printf("pairs store %d %s %s: %.2fs, peak RSS %.0f MB, received %.2f MB %s",
					s, v.Name, p.Tool, p.Seconds, mb(p.PeakRSS), mb(p.Traffic.Received), p.Error)
				res.Pulls = append(res.Pulls, p)
			}
		}
		// Unmounted now, removed with root once every round is done: the next round's cold
		// pulls must not create their files right after these removals (see settleRemovals).
		for k := range dirs {
			_ = unmountTree(dirs[k])
			_ = removeTree(podmanRunroot(dirs[k]))
		}
	}
	return res
}

// pairOrder is the tool that pulls j-th of n in round s for version i: the
// order rotates with both, so no tool always goes first on a version.
func pairOrder(s, i, j, n int) int { return (j + i + s) % n }

func podmanPairTool(registryAddr string) pairTool {
	return pairTool{
		name: pairPodman,
		setup: func(dir string) ([]string, error) {
			e, err := newPodmanEnv(dir, true, registryAddr)
			if err != nil {
				return nil, err
			}
			return e.env, nil
		},
		pull: func(dir, ref string) []string {
			e := &podmanEnv{root: filepath.Join(dir, "root"), runroot: podmanRunroot(dir)}
			return append([]string{"podman"}, e.args("pull", "-q", "--tls-verify=false", ref)...)
		},
	}
}

func kuraPairTool(bin string) pairTool {
	return pairTool{
		name: pairKura,
		setup: func(dir string) ([]string, error) {
			if err := removeTree(dir); err != nil {
				return nil, err
			}
			return os.Environ(), os.MkdirAll(filepath.Join(dir, "store"), 0o700)
		},
		pull: func(dir, ref string) []string {
			return append([]string{bin}, kuraPullArgs(filepath.Join(dir, "store"), ref)...)
		},
	}
}

// timedPull runs argv under GNU time (for the peak RSS) and takes the wall
// time around it, and the pull's requests from the registry's access log.
//
// Dirty pages are written out first (sync(1), untimed): kura fsyncs what it
// stores and podman does not, so without it the pull after a podman pull
// would pay for podman's writeback.
func timedPull(ctx context.Context, alog *accessLog, argv, env []string) PairPull {
	var p PairPull
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil {
		p.Error = "sync: " + err.Error()
		return p
	}
	mark, err := alog.Mark(ctx)
	if err != nil {
		p.Error = err.Error()
		return p
	}
	rssFile, err := os.CreateTemp("", "kura-bench-rss-*")
	if err != nil {
		p.Error = err.Error()
		return p
	}
	rssFile.Close()
	defer os.Remove(rssFile.Name())
	cmd := exec.CommandContext(ctx, "/usr/bin/time", append([]string{"-f", "%M", "-o", rssFile.Name()}, argv...)...)
	cmd.Env = env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err = cmd.Run()
	p.Seconds = time.Since(start).Seconds()
	if err != nil {
		p.Error = fmt.Sprintf("%s: %v: %s", filepath.Base(argv[0]), err, tail(out.String(), 500))
	}
	if b, rerr := os.ReadFile(rssFile.Name()); rerr == nil {
		kb, _ := strconv.ParseInt(strings.TrimSpace(lastLine(string(b))), 10, 64)
		p.PeakRSS = kb * 1024
	}
	reqs, lerr := alog.Since(ctx, mark)
	if lerr != nil && p.Error == "" {
		p.Error = lerr.Error()
	}
	p.Traffic = sumTraffic(reqs)
	for _, r := range reqs {
		if !slices.Contains(p.Agents, r.UserAgent) {
			p.Agents = append(p.Agents, r.UserAgent)
		}
	}
	return p
}

// lastLine is the last non-empty line of s (GNU time writes "Command exited
// with non-zero status" before the figure when the command fails).
func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// Spread is a median with its range over n samples.
type Spread struct {
	Median, Min, Max float64
	N                int
}

func spreadOf(xs []float64) Spread {
	if len(xs) == 0 {
		return Spread{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	m := s[len(s)/2]
	if len(s)%2 == 0 {
		m = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{Median: m, Min: s[0], Max: s[len(s)-1], N: len(s)}
}

// pairRatios returns, for the versions selected by keep, the ratio
// kura/podman of each pair (same store round, same version) in which both
// pulls succeeded.
func pairRatios(pulls []PairPull, keep func(version string) bool) []float64 {
	type key struct {
		store   int
		version string
	}
	podman := map[key]float64{}
	for _, p := range pulls {
		if p.Tool == pairPodman && p.Error == "" && keep(p.Version) {
			podman[key{p.Store, p.Version}] = p.Seconds
		}
	}
	var out []float64
	for _, p := range pulls {
		if p.Tool != pairKura || p.Error != "" || !keep(p.Version) {
			continue
		}
		if t, ok := podman[key{p.Store, p.Version}]; ok && t > 0 {
			out = append(out, p.Seconds/t)
		}
	}
	return out
}

// pairValues collects one figure of a tool's successful pulls of the
// versions selected by keep.
func pairValues(pulls []PairPull, tool string, keep func(string) bool, f func(PairPull) float64) []float64 {
	var out []float64
	for _, p := range pulls {
		if p.Tool == tool && p.Error == "" && keep(p.Version) {
			out = append(out, f(p))
		}
	}
	return out
}

// pairsReport writes the timed comparison: the cold pull of the first
// version and every update pull, as medians and ranges over the store
// rounds, with the Kura/podman ratio taken pair by pair.
func pairsReport(w func(string, ...any), res *Results) {
	pr := res.Pairs
	if pr == nil || len(pr.Pulls) == 0 {
		return
	}
	w("#### Timed pulls, alternating, straight to the registry\n\n")
	w("Both tools pull the same images (`%s`) straight from the registry (no proxy; bytes from the registry's access log), as a user runs them: `podman pull -q` with `use_hard_links = \"true\"` and no terminal, `kura pull`, each under GNU time for the peak RSS. %d rounds: in each, both tools get new empty stores and pull every version in order, so version N goes into a store holding exactly the versions before it; which tool goes first alternates with the version and the round. Figures are medians [min–max] over the rounds; the ratio is Kura/podman taken pair by pair (same round, same version), then the median.\n\n", pr.Repo, pr.Stores)
	w("| pull | podman s | kura s | Kura/podman | kura peak RSS MB | podman peak RSS MB | received MB kura / podman | pairs |\n|---|---:|---:|---:|---:|---:|---:|---:|\n")
	row := func(label string, keep func(string) bool) {
		secs := func(p PairPull) float64 { return p.Seconds }
		rss := func(p PairPull) float64 { return mb(p.PeakRSS) }
		recv := func(p PairPull) float64 { return mb(p.Traffic.Received) }
		ps, ks := spreadOf(pairValues(pr.Pulls, pairPodman, keep, secs)), spreadOf(pairValues(pr.Pulls, pairKura, keep, secs))
		ratio := spreadOf(pairRatios(pr.Pulls, keep))
		kr, pm := spreadOf(pairValues(pr.Pulls, pairKura, keep, rss)), spreadOf(pairValues(pr.Pulls, pairPodman, keep, rss))
		kb, pb := spreadOf(pairValues(pr.Pulls, pairKura, keep, recv)), spreadOf(pairValues(pr.Pulls, pairPodman, keep, recv))
		w("| %s | %s | %s | **%s** | %s | %s | %.2f / %.2f | %d |\n", label, fmtSpread(ps, "%.2f"), fmtSpread(ks, "%.2f"),
			fmtSpread(ratio, "%.2f×"), fmtSpread(kr, "%.0f"), fmtSpread(pm, "%.0f"), kb.Median, pb.Median, ratio.N)
	}
	if len(res.Versions) > 0 {
		first := res.Versions[0].Name
		row("cold: "+first+" into an empty store", func(v string) bool { return v == first })
		row("every update pull ("+res.Versions[1].Name+"…"+res.Versions[len(res.Versions)-1].Name+")", func(v string) bool { return v != first })
		for _, v := range res.Versions[1:] {
			row("update: "+v.Name, func(x string) bool { return x == v.Name })
		}
	}
	var failed []string
	agents := map[string][]string{}
	for _, p := range pr.Pulls {
		if p.Error != "" {
			failed = append(failed, fmt.Sprintf("%s %s (round %d): %s", p.Tool, p.Version, p.Store, tail(p.Error, 300)))
		}
		for _, a := range p.Agents {
			if !slices.Contains(agents[p.Tool], a) {
				agents[p.Tool] = append(agents[p.Tool], a)
			}
		}
	}
	w("\nUser-Agents in the access log per tool (each pull's requests are those between two marker requests): podman %q; kura %q.\n", agents[pairPodman], agents[pairKura])
	for _, f := range failed {
		w("\nFailed: %s\n", f)
	}
	for _, n := range pr.Notes {
		w("\nNote: %s\n", n)
	}
	w("\n")
}

func fmtSpread(s Spread, format string) string {
	if s.N == 0 {
		return "—"
	}
	return fmt.Sprintf(format+" ["+format+"–"+format+"]", s.Median, s.Min, s.Max)
}
