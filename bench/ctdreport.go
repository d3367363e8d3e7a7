package main

import (
	"fmt"
	"slices"
	"strings"
)

// ctdValues collects a figure of the successful starts selected by keep.
func ctdValues(starts []CtdStart, keep func(CtdStart) bool, f func(CtdStart) float64) []float64 {
	var out []float64
	for _, s := range starts {
		if s.Error == "" && keep(s) {
			out = append(out, f(s))
		}
	}
	return out
}

// ctdSetupsOf is the report's set-ups, the baseline first (results written
// before -ctd-setups existed compared overlayfs and kura).
func ctdSetupsOf(res *CtdResults) []string {
	if len(res.Setups) == 0 {
		return []string{ctdOverlay, ctdKura}
	}
	return res.Setups
}

// ctdRatios is, for the starts selected by keep, other/base of f taken pair
// by pair (same round, same version).
func ctdRatios(starts []CtdStart, keep func(CtdStart) bool, f func(CtdStart) float64, base, other string) []float64 {
	type key struct {
		round   int
		version string
	}
	ovl := map[key]float64{}
	for _, s := range starts {
		if s.Setup == base && s.Error == "" && keep(s) {
			ovl[key{s.Round, s.Version}] = f(s)
		}
	}
	var out []float64
	for _, s := range starts {
		if o, ok := ovl[key{s.Round, s.Version}]; ok && s.Setup == other && s.Error == "" && keep(s) && o > 0 {
			out = append(out, f(s)/o)
		}
	}
	return out
}

// ctdSpread is the median [min–max] of xs divided by scale, prec decimals.
func ctdSpread(xs []float64, scale float64, prec int) string {
	for i := range xs {
		xs[i] /= scale
	}
	return fmtSpread(spreadOf(xs), fmt.Sprintf("%%.%df", prec))
}

func startSecs(s CtdStart) float64 { return s.Seconds }
func pullSecs(s CtdStart) float64  { return s.PullSeconds }

// recv is the bytes the start's own clients received: the registry's log
// between PullImage and the answer also holds another set-up's background
// fetches (stargz-snapshotter's, as Go-http-client; a lazy Kura's), which
// belong to that set-up. Kura and kura-lazy share a User-Agent, so between
// the two this split cannot be made.
func recv(s CtdStart) float64 {
	if len(s.ByAgent) == 0 {
		return float64(s.Traffic.Received)
	}
	var n int64
	for agent, b := range s.ByAgent {
		if ownAgent(s.Setup, agent) {
			n += b
		}
	}
	return float64(n)
}

// ownAgent says whether requests with this User-Agent name are the set-up's.
func ownAgent(setup, agent string) bool {
	switch snapshotterOf(setup) {
	case ctdKura:
		return agent == "containerd" || agent == "kura"
	case ctdStargz:
		return agent == "containerd" || agent == "Go-http-client"
	}
	return agent == "containerd"
}

// ctdMarkdown renders the comparison: per version, then cold and update
// pulls together, then disk and page cache.
func ctdMarkdown(res *CtdResults) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f+"\n", a...) }
	setups := ctdSetupsOf(res)
	w("# containerd: %s", strings.Join(setups, " against "))
	w("")
	w("%s; %d rounds of fresh daemons, %d versions of %s; read set %v; %.0f s in all.", res.Started.UTC().Format("2006-01-02 15:04 MST"),
		res.Rounds, len(res.Versions), res.Repo, res.ReadSet, res.TotalSeconds)
	w("Load (/proc/loadavg at each round's start and at the end): %s.", strings.Join(res.Load, "; "))
	w("Tools: %v.", res.Tools)
	w("")
	w("## Per version: PullImage to the first HTTP answer (s), and bytes received (MB)")
	w("")
	w("| version |%s |%s |%s |", ctdCols(setups, "%s s"), ctdRatioCols(setups), ctdCols(setups, "%s MB"))
	w("|---|%s", strings.Repeat("---:|", 3*len(setups)-1))
	for _, v := range res.Versions {
		is := func(setup string) func(CtdStart) bool {
			return func(s CtdStart) bool { return s.Version == v && (setup == "" || s.Setup == setup) }
		}
		var secs, ratios, mbs []string
		for i, setup := range setups {
			secs = append(secs, ctdSpread(ctdValues(res.Starts, is(setup), startSecs), 1, 2))
			mbs = append(mbs, ctdSpread(ctdValues(res.Starts, is(setup), recv), 1e6, 2))
			if i > 0 {
				ratios = append(ratios, ctdSpread(ctdRatios(res.Starts, is(""), startSecs, setups[0], setup), 1, 2))
			}
		}
		w("| %s | %s | %s | %s |", v, strings.Join(secs, " | "), strings.Join(ratios, " | "), strings.Join(mbs, " | "))
	}
	w("")
	ctdSummary(w, res)
	ctdDiskReport(w, res)
	ctdPageCacheReport(w, res)
	if len(res.Notes) > 0 {
		w("")
		w("Notes: %s", strings.Join(res.Notes, "; "))
	}
	for _, s := range res.Starts {
		if s.Error != "" {
			w("- error: round %d %s %s: %s", s.Round, s.Version, s.Setup, s.Error)
		}
	}
	return b.String()
}

// ctdCols is one column header per set-up.
func ctdCols(setups []string, format string) string {
	var cols []string
	for _, s := range setups {
		cols = append(cols, " "+fmt.Sprintf(format, s))
	}
	return strings.Join(cols, " |")
}

// ctdRatioCols is one column header per set-up but the baseline.
func ctdRatioCols(setups []string) string {
	var cols []string
	for _, s := range setups[1:] {
		cols = append(cols, fmt.Sprintf(" %s/%s (pairwise)", s, setups[0]))
	}
	return strings.Join(cols, " |")
}

func ctdSummary(w func(string, ...any), res *CtdResults) {
	cold := func(s CtdStart) bool { return s.Version == res.Versions[0] }
	update := func(s CtdStart) bool { return s.Version != res.Versions[0] }
	and := func(f func(CtdStart) bool, setup string) func(CtdStart) bool {
		return func(s CtdStart) bool { return f(s) && (setup == "" || s.Setup == setup) }
	}
	w("## Cold start (%s) and update starts (the other versions, each after the one before)", res.Versions[0])
	w("")
	setups := ctdSetupsOf(res)
	w("| |%s |%s |", ctdCols(setups, "%s"), ctdRatioCols(setups))
	w("|---|%s", strings.Repeat("---:|", 2*len(setups)-1))
	for _, row := range []struct {
		name  string
		keep  func(CtdStart) bool
		f     func(CtdStart) float64
		scale float64
		prec  int
	}{
		{"cold: PullImage to first answer, s", cold, startSecs, 1, 2},
		{"cold: PullImage alone, s", cold, pullSecs, 1, 2},
		{"cold: MB received", cold, recv, 1e6, 1},
		{"update: PullImage to first answer, s", update, startSecs, 1, 2},
		{"update: PullImage alone, s", update, pullSecs, 1, 2},
		{"update: MB received per pull", update, recv, 1e6, 2},
	} {
		var vals, ratios []string
		for i, setup := range setups {
			vals = append(vals, ctdSpread(ctdValues(res.Starts, and(row.keep, setup), row.f), row.scale, row.prec))
			if i > 0 {
				ratios = append(ratios, ctdSpread(ctdRatios(res.Starts, and(row.keep, ""), row.f, setups[0], setup), 1, 3))
			}
		}
		w("| %s | %s | %s |", row.name, strings.Join(vals, " | "), strings.Join(ratios, " | "))
	}
	var agents []string
	for _, s := range res.Starts {
		for a, n := range s.ByAgent {
			if entry := s.Setup + " " + a; n > 0 && !slices.Contains(agents, entry) {
				agents = append(agents, entry)
			}
		}
	}
	slices.Sort(agents)
	w("")
	w("Medians [min–max] over all rounds (and, for updates, all update versions). Requests seen by setup and client: %s.", strings.Join(agents, ", "))
	w("")
}

func ctdDiskReport(w func(string, ...any), res *CtdResults) {
	w("## Disk after %d versions (MB; `du -sbx`, hard links once)", len(res.Versions))
	w("")
	w("| setup | total | parts |")
	w("|---|---:|---|")
	for _, setup := range ctdSetupsOf(res) {
		var tot []float64
		parts := map[string][]float64{}
		for _, d := range res.Disk {
			if d.Setup == setup && d.Error == "" {
				tot = append(tot, float64(d.Total))
				for k, n := range d.Parts {
					parts[k] = append(parts[k], float64(n))
				}
			}
		}
		var ps []string
		for k, xs := range parts {
			ps = append(ps, fmt.Sprintf("%s %s", k, ctdSpread(xs, 1e6, 1)))
		}
		slices.Sort(ps)
		w("| %s | %s | %s |", setup, ctdSpread(tot, 1e6, 1), strings.Join(ps, "; "))
	}
	w("")
}

func ctdPageCacheReport(w func(string, ...any), res *CtdResults) {
	w("## Page cache: every running container (one per version) reads the read set (MB)")
	w("")
	w("| setup | containers | charged to the containers' cgroups | Cached growth | exec alone (Cached) | snapshotter's files resident (mincore) |")
	w("|---|---:|---:|---:|---:|---:|")
	for _, setup := range ctdSetupsOf(res) {
		var charged, delta, over, resid []float64
		n := 0
		for _, p := range res.PageCache {
			if p.Setup == setup && p.Error == "" {
				charged, delta = append(charged, float64(p.Charged)), append(delta, float64(p.CachedDelta))
				over, resid = append(over, float64(p.Overhead)), append(resid, float64(p.Resident))
				n = p.Containers
			}
		}
		w("| %s | %d | %s | %s | %s | %s |", setup, n, ctdSpread(charged, 1e6, 1), ctdSpread(delta, 1e6, 1),
			ctdSpread(over, 1e6, 1), ctdSpread(resid, 1e6, 1))
	}
}
