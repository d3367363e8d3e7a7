package main

import (
	"fmt"
	"maps"
	"slices"
	"strings"
)

// alsReport is als.md: the side-by-side tables of an -als run.
func alsReport(res *ALSResults) string {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	w("### podman with Kura as its additional layer store (bench -als)\n\n")
	w("Started %s, %d rounds; load average (1, 5, 15 min) at each round's start and at the end: %s.\n",
		res.Started.UTC().Format("2006-01-02 15:04 UTC"), res.Rounds, strings.Join(res.Load, "; "))
	w("Images: `%s:c0..c%d` (Kura's pushes). Tools: %v.\n\n", res.Repo, len(res.Versions)-1, res.Tools)
	if len(res.Versions) < 2 {
		return b.String()
	}
	first := res.Versions[0].Name
	isCold := func(v string) bool { return v == first }
	isUpdate := func(v string) bool { return v != first }
	alsBytesTable(w, res)
	w("\n#### Time to a running container (pull + `podman run -d` apache2 until its first HTTP GET answers 200)\n\n")
	w("Median [min–max] over rounds; ratios pair by pair (same round, same version), then the median.\n\n")
	w("| steps | %s s | %s s | %s s | Kura / hard links off | Kura / hard links on |\n|---|---:|---:|---:|---:|---:|\n", alsKura, alsPodman, alsPodmanHL)
	for _, row := range []struct {
		label string
		keep  func(string) bool
		f     func(ALSStep) float64
	}{
		{"cold: " + first + ", running", isCold, func(s ALSStep) float64 { return s.Running }},
		{"updates " + res.Versions[1].Name + "…" + res.Versions[len(res.Versions)-1].Name + ", running", isUpdate, func(s ALSStep) float64 { return s.Running }},
		{"cold: " + first + ", pull alone", isCold, func(s ALSStep) float64 { return s.Pull }},
		{"updates, pull alone", isUpdate, func(s ALSStep) float64 { return s.Pull }},
	} {
		var cells []string
		for _, t := range []string{alsKura, alsPodman, alsPodmanHL} {
			cells = append(cells, fmtSpread(spreadOf(alsValues(res.Steps, t, row.keep, row.f)), "%.2f"))
		}
		for _, t := range []string{alsPodman, alsPodmanHL} {
			cells = append(cells, "**"+fmtSpread(spreadOf(alsRatios(res.Steps, t, row.keep, row.f)), "%.2f×")+"**")
		}
		w("| %s | %s |\n", row.label, strings.Join(cells, " | "))
	}
	alsSidesTable(w, res)
	for _, s := range res.Steps {
		if s.Error != "" {
			w("\nFailed: %s %s round %d: %s\n", s.Tool, s.Version, s.Round, s.Error)
		}
	}
	for _, n := range res.Notes {
		w("\nNote: %s\n", n)
	}
	return b.String()
}

// alsBytesTable gives each version's bytes from the registry (medians over rounds: they do not
// vary) and what podman itself fetched through the layer store.
func alsBytesTable(w func(string, ...any), res *ALSResults) {
	w("#### Bytes from the registry per pull (access log; medians over rounds)\n\n")
	w("| version | floor MB | %s MB | of which podman itself | podman's layer blob GETs | %s MB | %s MB |\n|---|---:|---:|---:|---:|---:|---:|\n", alsKura, alsPodman, alsPodmanHL)
	med := func(t, v string, f func(ALSStep) float64) float64 {
		return spreadOf(alsValues(res.Steps, t, func(x string) bool { return x == v }, f)).Median
	}
	bytesOf := func(s ALSStep) float64 { return mb(s.Bytes) }
	var sums [4]float64
	for i, v := range res.Versions {
		k, kp := med(alsKura, v.Name, bytesOf), med(alsKura, v.Name, func(s ALSStep) float64 { return mb(s.ByPodman) })
		gets := med(alsKura, v.Name, func(s ALSStep) float64 { return float64(s.PodmanBlobGets) })
		p, ph := med(alsPodman, v.Name, bytesOf), med(alsPodmanHL, v.Name, bytesOf)
		w("| %s | %.2f | %.2f | %.3f | %.0f | %.2f | %.2f |\n", v.Name, mb(v.FloorBytes), k, kp, gets, p, ph)
		if i > 0 {
			sums[0], sums[1], sums[2], sums[3] = sums[0]+mb(v.FloorBytes), sums[1]+k, sums[2]+p, sums[3]+ph
		}
	}
	w("| **all updates** | %.2f | **%.2f** | | | **%.2f** | **%.2f** |\n", sums[0], sums[1], sums[2], sums[3])
}

// alsSidesTable gives disk and the os-release check after ten versions, then the page cache.
func alsSidesTable(w func(string, ...any), res *ALSResults) {
	if len(res.Sides) == 0 {
		return
	}
	w("\n#### After ten versions (first round)\n\n| | disk MB (du -sbcx) |\n|---|---:|\n")
	for _, s := range res.Sides {
		w("| %s | %s |\n", s.Tool, mbs(s.Disk))
	}
	for _, s := range res.Sides {
		w("\n%s: disk = %s. `podman run %s:c9 cat /etc/os-release`: %q", s.Tool, strings.Join(s.DiskParts, " + "), res.Repo, firstLine(s.OSRelease))
		if s.Error != "" {
			w(" (error: %s)", s.Error)
		}
		w("\n")
	}
	alsPageCacheTable(w, res.PageCache)
}

// alsPageCacheTable gives each measure of the ten reading containers, pass by pass.
func alsPageCacheTable(w func(string, ...any), pcs []ALSPageCache) {
	if len(pcs) == 0 {
		return
	}
	w("\n#### Ten running containers (one per version) reading the same %s files: charged to their memory cgroups\n\n", "common")
	w("| pass | set-up (order in the pass) | page cache MB | kernel memory MB (dentries, inodes) | both MB | resident in the storage MB (mincore) | Cached delta MB (whole machine) |\n|---|---|---:|---:|---:|---:|---:|\n")
	for _, pc := range pcs {
		if pc.Error != "" {
			w("| %d | %s (%d) | error: %s | | | | |\n", pc.Pass, pc.Tool, pc.Order+1, pc.Error)
			continue
		}
		resident := mbs(pc.Resident)
		if len(pc.ResidentBy) > 1 {
			var parts []string
			for _, k := range slices.Sorted(maps.Keys(pc.ResidentBy)) {
				if pc.ResidentBy[k] > 0 {
					parts = append(parts, fmt.Sprintf("%s %s", k, mbs(pc.ResidentBy[k])))
				}
			}
			resident += " (" + strings.Join(parts, ", ") + ")"
		}
		w("| %d | %s (%d) | %s | %s | %s | %s | %s |\n", pc.Pass, pc.Tool, pc.Order+1, mbs(pc.Charged), mbs(pc.Kernel),
			mbs(pc.Charged+pc.Kernel), resident, mbs(pc.CachedDelta))
	}
}

// alsValues collects one figure of a set-up's successful steps of the versions keep selects.
func alsValues(steps []ALSStep, tool string, keep func(string) bool, f func(ALSStep) float64) []float64 {
	var out []float64
	for _, s := range steps {
		if s.Tool == tool && s.Error == "" && keep(s.Version) {
			out = append(out, f(s))
		}
	}
	return out
}

// alsRatios is Kura's figure over the other set-up's, step by step (same round, same version).
func alsRatios(steps []ALSStep, other string, keep func(string) bool, f func(ALSStep) float64) []float64 {
	type key struct {
		round   int
		version string
	}
	base := map[key]float64{}
	for _, s := range steps {
		if s.Tool == other && s.Error == "" && keep(s.Version) {
			base[key{s.Round, s.Version}] = f(s)
		}
	}
	var out []float64
	for _, s := range steps {
		if s.Tool != alsKura || s.Error != "" || !keep(s.Version) {
			continue
		}
		if d, ok := base[key{s.Round, s.Version}]; ok && d > 0 {
			out = append(out, f(s)/d)
		}
	}
	return out
}
