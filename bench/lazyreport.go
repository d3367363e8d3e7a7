package main

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// metadataSizes reads the compressed TOC and tar-split sizes of version's (one) layer from its
// manifest's annotations.
func (b *lazyBench) metadataSizes(ctx context.Context, version string) (toc, tarSplit int64, err error) {
	var m struct {
		Layers []struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
	}
	if err := regJSON(ctx, b.regAddr, kuraRepo, "/manifests/"+version, &m); err != nil {
		return 0, 0, fmt.Errorf("manifest of %s: %w", version, err)
	}
	for _, l := range m.Layers {
		t, err := positionLength(l.Annotations[annotationOldTOCPosition])
		if err != nil {
			return 0, 0, err
		}
		ts, err := positionLength(l.Annotations[annotationTarSplitPosition])
		if err != nil {
			return 0, 0, err
		}
		toc, tarSplit = toc+t, tarSplit+ts
	}
	return toc, tarSplit, nil
}

// printLazySummary prints, per version, each tool's median time to the first answer and
// bytes, the ratios to podman's, and the bytes of the lazy pull against what apache2 read.
func printLazySummary(w io.Writer, res *lazyResults) {
	fmt.Fprintf(w, "lazy mode %s, pre-reads %v; load: %s\n\n", res.Mode, res.PreRead, strings.Join(res.Load, " | "))
	fmt.Fprintln(w, "| version | tool | n | time to first answer, median (range) | registry MB until then, median (range) | time / podman's |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|")
	for _, v := range versionsOf(res) {
		podman := spreadOf(stepValues(res, "podman", v, func(s lazyStep) float64 { return s.Seconds })).Median
		for _, t := range res.Tools {
			secs := spreadOf(stepValues(res, t, v, func(s lazyStep) float64 { return s.Seconds }))
			mbs := spreadOf(stepValues(res, t, v, func(s lazyStep) float64 { return float64(s.Bytes) / 1e6 }))
			ratio := "–"
			if podman > 0 && secs.N > 0 {
				ratio = fmt.Sprintf("%.2f", secs.Median/podman)
			}
			fmt.Fprintf(w, "| %s | %s | %d | %.2f s (%.2f–%.2f) | %.2f (%.2f–%.2f) | %s |\n", v, t, secs.N,
				secs.Median, secs.Min, secs.Max, mbs.Median, mbs.Min, mbs.Max, ratio)
		}
	}
	fmt.Fprintln(w)
	for _, tr := range res.Traces {
		lazy := spreadOf(stepValues(res, "kura-lazy", tr.Version, func(s lazyStep) float64 { return float64(s.Bytes) })).Median
		base := float64(tr.ReadBytes + tr.TOC)
		ratio := 0.0
		if base > 0 {
			ratio = lazy / base
		}
		fmt.Fprintf(w, "trace %s: apache2 opened %d files of the image, %.2f MB (%d needed a fill, read-ahead or the store served the others); TOC %.2f MB, tar-split %.2f MB; the trace run fetched %.2f MB until the answer; kura-lazy's median %.2f MB = %.2f × (read + TOC) %s\n",
			tr.Version, tr.Files, float64(tr.ReadBytes)/1e6, tr.Filled, float64(tr.TOC)/1e6, float64(tr.TarSplit)/1e6, float64(tr.Fetched)/1e6, lazy/1e6, ratio, tr.Error)
	}
	for _, s := range res.Steps {
		if s.Error != "" {
			fmt.Fprintf(w, "error: round %d %s %s: %s\n", s.Round, s.Tool, s.Version, tail(s.Error, 300))
		}
	}
}

func versionsOf(res *lazyResults) []string {
	var vs []string
	seen := map[string]bool{}
	for _, s := range res.Steps {
		if s.Version != "" && !seen[s.Version] {
			seen[s.Version] = true
			vs = append(vs, s.Version)
		}
	}
	return vs
}

// stepValues are f of the successful steps of tool on version.
func stepValues(res *lazyResults, tool, version string, f func(lazyStep) float64) []float64 {
	var out []float64
	for _, s := range res.Steps {
		if s.Tool == tool && s.Version == version && s.Error == "" {
			out = append(out, f(s))
		}
	}
	return out
}
