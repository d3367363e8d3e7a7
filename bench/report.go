package main

import (
	"encoding/json"
	"fmt"
	"image/color"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Results is everything one run measured (results.json).
type Results struct {
	Started      time.Time         `json:"started"`
	Finished     time.Time         `json:"finished"`
	TotalSeconds float64           `json:"totalSeconds"`
	Quick        bool              `json:"quick"`
	Tools        map[string]string `json:"tools"`
	ReadSet      []string          `json:"readSet"`
	Versions     []Version         `json:"versions"`
	Push         []PushResult      `json:"push"`
	PushSeconds  float64           `json:"pushSeconds"`  // all pushes, two at a time
	PushUploaded int64             `json:"pushUploaded"` // request body bytes of all pushes
	// PushReusedFrom is set when the registry already held this corpus from
	// the run at that time, so nothing was pushed in this one.
	PushReusedFrom *time.Time     `json:"pushReusedFrom,omitempty"`
	Systems        []SystemResult `json:"systems"`
	// ColdPulls are the alternating cold pulls of the first version by
	// kura, podman and skopeo (copy to dir:).
	ColdPulls []ColdPull `json:"coldPulls,omitempty"`
	// Pairs are the timed pulls: podman and kura alternating on the same
	// images, straight to the registry, in several rounds of fresh stores.
	Pairs *Pairs `json:"pairs,omitempty"`
	// ReadSets describe what the page-cache readers read, with their floors.
	ReadSets []ReadSet `json:"readSets,omitempty"`
	Phases   []Phase   `json:"phases"`
}

// Phase is the time since start at which a part of the run ended.
type Phase struct {
	Name    string  `json:"name"`
	Seconds float64 `json:"seconds"`
}

func writeReport(cfg config, res *Results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.json"), b, 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(cfg.out, "results.md"), []byte(markdown(res)), 0o644); err != nil {
		return err
	}
	if err := chart(res, filepath.Join(cfg.out, "chart.png")); err != nil {
		return fmt.Errorf("drawing chart: %w", err)
	}
	log.Printf("results in %s (results.json, results.md, chart.png); total %.0fs", cfg.out, res.TotalSeconds)
	return nil
}

// rewriteReport redraws the Markdown and the chart from a results.json.
func rewriteReport(cfg config) error {
	b, err := os.ReadFile(filepath.Join(cfg.out, "results.json"))
	if err != nil {
		return err
	}
	var res Results
	if err := json.Unmarshal(b, &res); err != nil {
		return fmt.Errorf("parsing results.json: %w", err)
	}
	return writeReport(cfg, &res)
}

func mbs(n int64) string { return fmt.Sprintf("%.2f", mb(n)) }

// updateSums returns the bytes received over all update pulls (versions
// 1..N-1) and the floor for the same pulls.
func updateReceived(s SystemResult) (recv int64, n int) {
	for i, p := range s.Pulls {
		if i > 0 && p.Error == "" {
			recv += p.Traffic.Received
			n++
		}
	}
	return recv, n
}

func markdown(res *Results) string {
	var sb strings.Builder
	w := func(format string, a ...any) { fmt.Fprintf(&sb, format, a...) }
	n := len(res.Versions)
	w("### Benchmark: %d versions of one application image, one squashed layer each\n\n", n)
	w("Run %s, total %.0f s on this machine; %s; %s; registry %s; kernel %s.\n\n",
		res.Started.UTC().Format("2006-01-02 15:04 MST"), res.TotalSeconds, res.Tools["podman"], res.Tools["skopeo"],
		res.Tools["registry"], res.Tools["kernel"])

	var floorUpd int64
	for i, v := range res.Versions {
		if i > 0 {
			floorUpd += v.FloorBytes
		}
	}
	w("#### Summary (MB = 10^6 bytes)\n\nBytes, disk and page cache from the untimed pass through the counting proxy (podman under script(1) for its \"skipped:\" line); the timed figures are in \"Timed pulls\" below.\n\n")
	w("| puller (untimed pass, through the counting proxy) | first pull received | first pull s (proxy pass) | update pulls received (sum of %d) | × floor | floor incl. metadata (TOC + tar-split of the blobs pulled) | × floor incl. metadata | mean update pull s (proxy pass; timed figures below) | disk after %d | page cache MB, %d readers: Cached Δ (minus containers reading nothing) / resident in store |\n", n-1, n, n)
	w("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range res.Systems {
		if s.Skipped {
			w("| %s | skipped: %s | | | | | | | | |\n", s.Name, s.SkipReason)
			continue
		}
		recv, k := updateReceived(s)
		var secs float64
		for i, p := range s.Pulls {
			if i > 0 {
				secs += p.Seconds
			}
		}
		first, firstSecs, disk := "", "", ""
		if len(s.Pulls) > 0 {
			first = mbs(s.Pulls[0].Traffic.Received)
			firstSecs = fmt.Sprintf("%.2f", s.Pulls[0].Seconds)
			disk = mbs(s.Pulls[len(s.Pulls)-1].DiskAfter)
		}
		ratio, mean := "", ""
		if k > 0 && floorUpd > 0 {
			ratio = fmt.Sprintf("%.2f", float64(recv)/float64(floorUpd))
			mean = fmt.Sprintf("%.2f", secs/float64(k))
		}
		metaFloor, metaRatio := "", ""
		if meta, ok := updateMetadata(res, s); ok && k > 0 {
			metaFloor = fmt.Sprintf("%s (+%s)", mbs(floorUpd+meta), mbs(meta))
			metaRatio = fmt.Sprintf("%.2f", float64(recv)/float64(floorUpd+meta))
		}
		pc := "—"
		if s.PageCache != nil && s.PageCache.Error != "" && s.PageCache.Resident == 0 {
			pc = "failed (see below)"
		} else if s.PageCache != nil {
			pc = fmt.Sprintf("%s (%s) / %s", mbs(s.PageCache.CachedDelta), mbs(s.PageCache.CachedDelta-s.PageCache.Overhead), mbs(s.PageCache.Resident))
		}
		w("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", s.Name, first, firstSecs, mbs(recv), ratio, metaFloor, metaRatio, mean, disk, pc)
	}
	var unique, readSet int64
	if n > 0 {
		unique, readSet = res.Versions[n-1].UniqueBytes, res.Versions[n-1].ReadSetBytes
	}
	w("| floor | %s | | %s | 1.00 | | | | %s (distinct file contents) | %s (one copy of the read set) |\n\n",
		mbs(res.Versions[0].FloorBytes), mbs(floorUpd), mbs(unique), mbs(readSet))
	w("The floor is the zstd-10 size of the files new in each version. \"Floor incl. metadata\" adds, per update pull, the compressed TOC and tar-split of the blob that puller fetched (podman: skopeo's old-format blobs, TOC only, no tar-split; kura: its own blobs), read from the layer annotations.\n\n")
	pairsReport(w, res)
	coldPullReport(w, res)
	pageCacheReport(w, res)

	w("#### Corpus\n\n| version | layer tar MB | zstd:chunked blob MB (skopeo) | its TOC MB | push s | files | new files | new MB | floor MB (zstd-10 of new files) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, v := range res.Versions {
		blob, toc, secs := "", "", ""
		if i < len(res.Push) {
			blob, secs = mbs(res.Push[i].CompressedSize), fmt.Sprintf("%.1f", res.Push[i].Seconds)
			if res.Push[i].TOCSize > 0 {
				toc = mbs(res.Push[i].TOCSize)
			}
		}
		w("| %s | %s | %s | %s | %s | %d | %d | %s | %s |\n", v.Name, mbs(v.LayerSize), blob, toc, secs, v.Files, v.NewFiles, mbs(v.NewBytes), mbs(v.FloorBytes))
	}
	w("\nAll %d pushes (skopeo, two at a time): %.0f s, %s MB uploaded", len(res.Push), res.PushSeconds, mbs(res.PushUploaded))
	if res.PushReusedFrom != nil {
		w(" (in the run of %s; this run reused that registry content)", res.PushReusedFrom.UTC().Format(time.RFC3339))
	}
	w(".\n\n")

	for _, s := range res.Systems {
		if s.Skipped {
			continue
		}
		w("#### %s: per pull\n\n| version | requested MB | received MB | requests | ranges | Range answered 200 | time s (proxy pass) | disk after MB | podman \"skipped\" | floor MB | floor incl. metadata MB |\n|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|\n", s.Name)
		pushes := systemPushes(res, s)
		for i, p := range s.Pulls {
			floor, metaFloor := "", ""
			if i < n {
				floor = mbs(res.Versions[i].FloorBytes)
				if i < len(pushes) && pushes[i].TOCSize > 0 {
					metaFloor = mbs(res.Versions[i].FloorBytes + pushes[i].TOCSize + pushes[i].TarSplitSize)
				}
			}
			w("| %s | %s | %s | %d | %d | %d | %.2f | %s | %s | %s | %s |\n", p.Version, mbs(p.Traffic.Requested), mbs(p.Traffic.Received),
				p.Traffic.Requests, p.Traffic.Ranges, p.Traffic.IgnoredRange, p.Seconds, mbs(p.DiskAfter), p.Skipped, floor, metaFloor)
		}
		if s.PageCache != nil {
			pc := s.PageCache
			w("\nPage cache (%s, %d readers of %s): Cached Δ %s MB (the same containers reading nothing: %s MB); resident in the store's files %s MB; one copy of the read set is %s MB.",
				pc.Method, pc.Containers, strings.Join(res.ReadSet, " "), mbs(pc.CachedDelta), mbs(pc.Overhead), mbs(pc.Resident), mbs(readSet))
			if pc.Error != "" {
				w(" Error: %s", pc.Error)
			}
			w("\n")
		}
		if len(s.Push) > 0 {
			var secs float64
			var parts []string
			for _, p := range s.Push {
				secs += p.Seconds
				part := fmt.Sprintf("%s %s MB", p.Version, mbs(p.CompressedSize))
				if p.TOCSize > 0 {
					part += fmt.Sprintf(" (TOC %s, tar-split %s)", mbs(p.TOCSize), mbs(p.TarSplitSize))
				}
				parts = append(parts, part)
			}
			w("\nPushes by %s (two at a time): per-push times sum to %.0f s; layer blobs: %s.\n", s.Push[0].Tool, secs, strings.Join(parts, ", "))
		}
		for _, note := range s.Notes {
			w("\nNote: %s\n", note)
		}
		w("\n")
	}
	w("Phases (s since start): ")
	for i, p := range res.Phases {
		if i > 0 {
			w("; ")
		}
		w("%s %.0f", p.Name, p.Seconds)
	}
	w(".\n")
	return sb.String()
}

// colorFor keeps each puller's colour the same in every chart.
func colorFor(name string) color.Color {
	switch {
	case name == "floor":
		return color.RGBA{R: 0x44, G: 0x44, B: 0x44, A: 0xff}
	case strings.HasPrefix(name, "kura"):
		return color.RGBA{R: 0x21, G: 0x66, B: 0xac, A: 0xff}
	case strings.Contains(name, "use_hard_links=true"):
		return color.RGBA{R: 0xf4, G: 0xa5, B: 0x82, A: 0xff}
	default:
		return color.RGBA{R: 0xd6, G: 0x60, B: 0x4d, A: 0xff}
	}
}

// chart draws bytes received per update pull (grouped bars) and disk after N
// versions (lines), each puller next to the floor.
func chart(res *Results, path string) error {
	n := len(res.Versions)
	type series struct {
		name  string
		pulls plotter.Values // MB received, versions 1..n-1
		disk  plotter.XYs    // MB after 1..n versions
	}
	var ss []series
	for _, s := range res.Systems {
		if s.Skipped || len(s.Pulls) == 0 {
			continue
		}
		se := series{name: s.Name}
		for i, p := range s.Pulls {
			if i > 0 {
				se.pulls = append(se.pulls, mb(p.Traffic.Received))
			}
			se.disk = append(se.disk, plotter.XY{X: float64(i + 1), Y: mb(p.DiskAfter)})
		}
		for len(se.pulls) < n-1 {
			se.pulls = append(se.pulls, 0)
		}
		ss = append(ss, se)
	}
	fl := series{name: "floor"}
	for i, v := range res.Versions {
		if i > 0 {
			fl.pulls = append(fl.pulls, mb(v.FloorBytes))
		}
		fl.disk = append(fl.disk, plotter.XY{X: float64(i + 1), Y: mb(v.UniqueBytes)})
	}
	ss = append(ss, fl)

	bars := plot.New()
	bars.Add(plotter.NewGrid())
	bars.Title.Text = "Received per update pull"
	if len(res.Systems) > 0 && len(res.Systems[0].Pulls) > 0 {
		bars.Title.Text = fmt.Sprintf("Received per update pull (first pull: %s %.0f MB, floor %.0f MB)",
			res.Systems[0].Name, mb(res.Systems[0].Pulls[0].Traffic.Received), mb(res.Versions[0].FloorBytes))
	}
	bars.Y.Label.Text = "MB"
	bars.X.Label.Text = "version pulled (after the previous ones)"
	groups := max(1, n-1)
	width := vg.Points(min(60, 340/float64(groups)) / float64(len(ss)))
	for i, se := range ss {
		bc, err := plotter.NewBarChart(se.pulls, width)
		if err != nil {
			return err
		}
		bc.Color = colorFor(se.name)
		bc.LineStyle.Width = 0
		bc.Offset = width * vg.Length(float64(i)-float64(len(ss)-1)/2)
		bars.Add(bc)
		bars.Legend.Add(se.name, bc)
	}
	var names []string
	for _, v := range res.Versions[1:] {
		names = append(names, v.Name)
	}
	bars.NominalX(names...)
	var top float64
	for _, se := range ss {
		for _, v := range se.pulls {
			top = max(top, v)
		}
	}
	bars.Y.Min, bars.Y.Max = 0, top*1.45 // room for the legend
	bars.Legend.Top = true
	bars.Legend.Left = true

	disk := plot.New()
	disk.Add(plotter.NewGrid())
	disk.Title.Text = "Disk after N versions"
	disk.Y.Label.Text = "MB (du -sb)"
	disk.X.Label.Text = "versions pulled"
	disk.Y.Min = 0
	var dtop float64
	for _, se := range ss {
		for _, p := range se.disk {
			dtop = max(dtop, p.Y)
		}
	}
	disk.Y.Max = dtop * 1.3
	for _, se := range ss {
		l, pts, err := plotter.NewLinePoints(se.disk)
		if err != nil {
			return err
		}
		l.Color, pts.Color = colorFor(se.name), colorFor(se.name)
		l.Width = vg.Points(2)
		disk.Add(l, pts)
		label := se.name
		if se.name == "floor" {
			label = "floor (distinct file contents)"
		}
		disk.Legend.Add(label, l, pts)
	}
	disk.Legend.Top = true
	disk.Legend.Left = true

	img := vgimg.NewWith(vgimg.UseWH(vg.Inch*13, vg.Inch*5.5), vgimg.UseDPI(110))
	dc := draw.New(img)
	t := draw.Tiles{Rows: 1, Cols: 2, PadX: vg.Inch * 0.4, PadTop: vg.Inch * 0.1, PadBottom: vg.Inch * 0.1, PadLeft: vg.Inch * 0.1, PadRight: vg.Inch * 0.2}
	cs := plot.Align([][]*plot.Plot{{bars, disk}}, t, dc)
	bars.Draw(cs[0][0])
	disk.Draw(cs[0][1])
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// systemPushes are the pushes of the images a system pulled.
func systemPushes(res *Results, s SystemResult) []PushResult {
	if s.Repo == kuraRepo {
		return s.Push
	}
	return res.Push
}

// updateMetadata sums the compressed TOC and tar-split sizes of the blobs of
// versions 1..N-1 a system pulled; false when they are not known.
func updateMetadata(res *Results, s SystemResult) (int64, bool) {
	pushes := systemPushes(res, s)
	if len(pushes) != len(res.Versions) {
		return 0, false
	}
	var sum int64
	for i, p := range pushes {
		if p.TOCSize == 0 {
			return 0, false
		}
		if i > 0 {
			sum += p.TOCSize + p.TarSplitSize
		}
	}
	return sum, true
}

// coldPullReport writes the cold-pull comparison: every round and the
// ratios of the medians.
func coldPullReport(w func(string, ...any), res *Results) {
	if len(res.ColdPulls) == 0 {
		return
	}
	first := ""
	if len(res.Versions) > 0 {
		first = res.Versions[0].Name
	}
	w("#### Cold pull of %s into an empty store\n\n", first)
	w("Each tool pulls %s into a new empty destination, %d rounds, the order rotating each round (registry blobs already in the page cache), straight from the registry (bytes from its access log), podman as `podman pull -q` with `use_hard_links = \"false\"`. All three fetch the same blob (see the image column). `skopeo copy docker://… dir:` fetches the blob whole and writes it as one file, with no decompression or per-file work: the cost of moving the bytes.\n\n", first, coldRounds)
	w("| round | tool | image | s | received MB | requests |\n|---:|---|---|---:|---:|---:|\n")
	for _, p := range res.ColdPulls {
		t := fmt.Sprintf("%.2f", p.Seconds)
		if p.Error != "" {
			t = "failed: " + tail(p.Error, 200)
		}
		repo := p.Ref
		if i := strings.Index(repo, "/"); i >= 0 {
			repo = repo[i+1:]
		}
		w("| %d | %s | %s | %s | %s | %d |\n", p.Round, p.Tool, repo, t, mbs(p.Traffic.Received), p.Traffic.Requests)
	}
	k, nk := coldMedian(res.ColdPulls, coldKura)
	pm, np := coldMedian(res.ColdPulls, coldPodman)
	sk, ns := coldMedian(res.ColdPulls, coldSkopeo)
	w("\nMedians: kura %.2f s (%d), podman %.2f s (%d), skopeo copy to dir: %.2f s (%d).", k, nk, pm, np, sk, ns)
	if nk > 0 && np > 0 && pm > 0 {
		w(" **Kura / podman = %.2f×**.", k/pm)
	}
	if nk > 0 && ns > 0 && sk > 0 {
		w(" **Kura / skopeo = %.2f×**.", k/sk)
	}
	w("\n\n")
}

// pageCacheReport writes ten readers against one reader, for both read
// sets, with Kura's resident pages split into objects and composefs images.
func pageCacheReport(w func(string, ...any), res *Results) {
	have := false
	for _, s := range res.Systems {
		if s.PageCache != nil && s.PageCache.One != nil {
			have = true
		}
	}
	if !have {
		return
	}
	var dirSet, common *ReadSet
	for i := range res.ReadSets {
		if res.ReadSets[i].Name == commonSetName {
			common = &res.ReadSets[i]
		} else if dirSet == nil {
			dirSet = &res.ReadSets[i]
		}
	}
	n := len(res.Versions)
	w("#### Page cache: %d readers against one\n\n", n)
	w("Resident pages of the store's files (mincore) after dropping caches and running the readers: one container or mount per version (%d), or one reader of the last version alone, measured the same way.\n\n", n)
	w("| puller | read set | one reader MB | %d readers MB | %d / one | %d readers: objects / composefs images / other MB |\n|---|---|---:|---:|---:|---|\n", n, n, n)
	row := func(name, set string, one, ten *Residency) {
		if one == nil || ten == nil {
			return
		}
		ratio := ""
		if one.Resident > 0 {
			ratio = fmt.Sprintf("%.2f", float64(ten.Resident)/float64(one.Resident))
		}
		split := ""
		if ten.ResidentBy != nil {
			split = fmt.Sprintf("%s / %s / %s", mbs(ten.ResidentBy["objects"]), mbs(ten.ResidentBy["composefs images"]),
				mbs(ten.Resident-ten.ResidentBy["objects"]-ten.ResidentBy["composefs images"]))
		}
		errs := ""
		for _, e := range []string{one.Error, ten.Error} {
			if e != "" {
				errs += " (error: " + tail(e, 200) + ")"
			}
		}
		w("| %s | %s | %s | %s | %s | %s%s |\n", name, set, mbs(one.Resident), mbs(ten.Resident), ratio, split, errs)
	}
	dirName, commonName := strings.Join(res.ReadSet, " "), commonSetName
	for _, s := range res.Systems {
		pc := s.PageCache
		if s.Skipped || pc == nil {
			continue
		}
		ten := &Residency{Readers: pc.Containers, CachedDelta: pc.CachedDelta, Resident: pc.Resident, ResidentBy: pc.ResidentBy}
		row(s.Name, dirName, pc.One, ten)
		row(s.Name, commonName, pc.CommonOne, pc.CommonTen)
	}
	if dirSet != nil {
		w("| floor | %s | %s (%s page-rounded) | %s (%s page-rounded: distinct contents over the %d versions) | | |\n",
			dirName, mbs(dirSet.Bytes), mbs(dirSet.Pages), mbs(dirSet.DistinctBytes), mbs(dirSet.DistinctPages), n)
	}
	if common != nil {
		w("| floor | %s (%d files) | %s (%s page-rounded; each distinct content once: %s) | the same | 1.00 | |\n",
			commonName, common.NumFiles, mbs(common.Bytes), mbs(common.Pages), mbs(common.DistinctPages))
	}
	w("\n")
	// What Kura's pages above the floor are.
	for _, s := range res.Systems {
		pc := s.PageCache
		if s.Skipped || pc == nil || pc.ResidentBy == nil || dirSet == nil {
			continue
		}
		obj, cfs := pc.ResidentBy["objects"], pc.ResidentBy["composefs images"]
		w("%s, %d readers of %s: %s MB resident = objects %s MB (the distinct contents they read, page-rounded: %s MB; %+.2f MB) + composefs images %s MB + other %s MB.",
			s.Name, pc.Containers, dirName, mbs(pc.Resident), mbs(obj), mbs(dirSet.DistinctPages), mb(obj-dirSet.DistinctPages),
			mbs(cfs), mbs(pc.Resident-obj-cfs))
		if one := pc.One; one != nil && one.ResidentBy != nil {
			w(" One reader: objects %s MB (one copy page-rounded: %s MB), composefs image %s MB.", mbs(one.ResidentBy["objects"]), mbs(dirSet.Pages), mbs(one.ResidentBy["composefs images"]))
		}
		if t, o := pc.CommonTen, pc.CommonOne; t != nil && o != nil && t.ResidentBy != nil && o.ResidentBy != nil && common != nil {
			w(" Common files: %d readers objects %s MB, composefs images %s MB; one reader objects %s MB, composefs image %s MB (one copy page-rounded: %s MB).",
				t.Readers, mbs(t.ResidentBy["objects"]), mbs(t.ResidentBy["composefs images"]), mbs(o.ResidentBy["objects"]),
				mbs(o.ResidentBy["composefs images"]), mbs(common.DistinctPages))
		}
		w("\n\n")
	}
}
