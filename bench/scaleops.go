package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// scaleOps are the measured operations, in the order of one cycle.
var scaleOps = []string{"update pull", "images", "df", "df -v", "fsck", "mount", "umount", "rmi",
	"gc, one image removed", "gc, nothing to free"}

// cycle runs every operation once on one store: the update pull (a partial
// pull of the next version of base 0: its previous version is stored, its new
// files are not), the read-only commands, a mount of the update, then rmi of it
// and gc twice, which leaves the store as it was for the next cycle.
func (e *scaleEnv) cycle(ctx context.Context, label string, run int) error {
	store := e.store(label)
	ref := e.reg + "/scale/b0:update-" + label
	mp := filepath.Join(e.dir, "mnt-"+label)
	if err := os.MkdirAll(mp, 0o755); err != nil {
		return err
	}
	args := map[string][]string{
		"update pull":           append(append([]string{"pull"}, kuraRegistryFlags...), ref),
		"images":                {"images"},
		"df":                    {"df"},
		"df -v":                 {"df", "-v"},
		"fsck":                  {"fsck"},
		"mount":                 {"mount", ref, mp},
		"umount":                {"umount", mp},
		"rmi":                   {"rmi", ref},
		"gc, one image removed": {"gc"},
		"gc, nothing to free":   {"gc"},
	}
	for _, op := range scaleOps {
		r, err := e.kura(ctx, store, args[op]...)
		if err != nil {
			if op == "mount" {
				_ = exec.Command("umount", mp).Run()
			}
			return err
		}
		if e.res.Ops[op] == nil {
			e.res.Ops[op] = map[string][]opRun{}
		}
		e.res.Ops[op][label] = append(e.res.Ops[op][label], r)
	}
	return nil
}

// concurrency pulls one new version of each of four bases into the big store,
// one after another and four at once, alternating, and removes them again
// after each round.
func (e *scaleEnv) concurrency(ctx context.Context) error {
	store := e.store(e.labels()[1])
	var refs []string
	for b := 0; b < min(4, e.sc.bases); b++ {
		refs = append(refs, fmt.Sprintf("%s/scale/b%d:next%d", e.reg, b, b))
	}
	for run := 0; run < e.sc.runs; run++ {
		for k := range 2 {
			parallel := (run+k)%2 == 1
			wall, err := e.pullAll(ctx, store, refs, parallel)
			if err != nil {
				return err
			}
			name := "sequential"
			if parallel {
				name = "concurrent"
			}
			e.res.Concurrent[name] = append(e.res.Concurrent[name], wall)
			if _, err := e.kura(ctx, store, append([]string{"rmi"}, refs...)...); err != nil {
				return err
			}
			if _, err := e.kura(ctx, store, "gc"); err != nil {
				return err
			}
		}
	}
	return nil
}

// pullAll pulls refs one after another or all at once and returns the wall
// time of the whole.
func (e *scaleEnv) pullAll(ctx context.Context, store string, refs []string, parallel bool) (float64, error) {
	start := time.Now()
	errs := make([]error, len(refs))
	var wg sync.WaitGroup
	for i, ref := range refs {
		pull := func() {
			defer wg.Done()
			args := append(append([]string{"--root", store, "pull"}, kuraRegistryFlags...), ref)
			if out, err := exec.CommandContext(ctx, e.sc.kura, args...).CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("kura pull %s: %v: %s", ref, err, lastLine(string(out)))
			}
		}
		wg.Add(1)
		if parallel {
			go pull()
		} else {
			pull()
		}
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	for _, err := range errs {
		if err != nil {
			return 0, err
		}
	}
	return wall, nil
}

// writeScaleReport writes scale.json and scale.md (the table BENCHMARKS.md quotes).
func writeScaleReport(out string, res *ScaleResults) error {
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	if err := saveJSON(filepath.Join(out, "scale.json"), res); err != nil {
		return err
	}
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format+"\n", a...) }
	small, big := fmt.Sprint(res.Small), fmt.Sprint(res.Images)
	w("# Store scaling: %s and %s images\n", small, big)
	w("Load average (1, 5, 15 min) at start, after building, at end: %s\n", strings.Join(res.Load, "; "))
	w("| store | images | layers | objects | object MB | metadata MB | chunk-index + journal KB |")
	w("|---|---|---|---|---|---|---|")
	for _, l := range []string{small, big} {
		st := res.Stores[l]
		w("| %s | %d | %d | %d | %.1f | %.1f | %.0f + %.0f |", l, st.Images, st.Layers, st.Objects,
			float64(st.ObjectBytes)/1e6, float64(st.MetaBytes)/1e6, float64(st.ChunkIndex)/1e3, float64(st.Journal)/1e3)
	}
	w("\n| operation | %s images: s, median [min–max] | %s images | ratio of medians | read MB (%s → %s) | CPU s (%s → %s) |", small, big, small, big, small, big)
	w("|---|---|---|---|---|---|")
	for _, op := range scaleOps {
		a, b := res.Ops[op][small], res.Ops[op][big]
		sa, sb := spreadOf(opField(a, secs)), spreadOf(opField(b, secs))
		ratio := 0.0
		if sa.Median > 0 {
			ratio = sb.Median / sa.Median
		}
		w("| %s | %s | %s | %.2f× | %.1f → %.1f | %.2f → %.2f |", op, fmtSpread(sa, "%.3f"), fmtSpread(sb, "%.3f"), ratio,
			spreadOf(opField(a, rmb)).Median, spreadOf(opField(b, rmb)).Median,
			spreadOf(opField(a, cpu)).Median, spreadOf(opField(b, cpu)).Median)
	}
	w("\nBytes written to chunk-index and its journal: per update pull %s (%s images) and %s (%s images); per layer imported while growing the store, median %s KB (range %s).",
		kbSpread(res.Ops["update pull"][small]), small, kbSpread(res.Ops["update pull"][big]), big,
		fmt.Sprintf("%.1f", spreadOf(opField(res.Growth, idxKB)).Median), fmtSpread(spreadOf(opField(res.Growth, idxKB)), "%.1f"))
	seq, con := spreadOf(res.Concurrent["sequential"]), spreadOf(res.Concurrent["concurrent"])
	if con.N > 0 {
		w("\nFour pulls of new versions of four bases into the %s-image store: one after another %s s, four at once %s s (ratio of medians %.2f).",
			big, fmtSpread(seq, "%.2f"), fmtSpread(con, "%.2f"), con.Median/seq.Median)
	}
	return os.WriteFile(filepath.Join(out, "scale.md"), []byte(sb.String()), 0o644)
}

func secs(r opRun) float64  { return r.Seconds }
func rmb(r opRun) float64   { return float64(r.RChar) / 1e6 }
func cpu(r opRun) float64   { return r.User + r.Sys }
func idxKB(r opRun) float64 { return float64(r.IndexWritten) / 1e3 }

func opField(rs []opRun, f func(opRun) float64) []float64 {
	out := make([]float64, len(rs))
	for i, r := range rs {
		out[i] = f(r)
	}
	return out
}

func kbSpread(rs []opRun) string {
	return fmtSpread(spreadOf(opField(rs, idxKB)), "%.1f") + " KB"
}
