package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io/fs"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The store-scaling run (-scale, issue 19): the same operations on a store of
// a few images and on the same store grown to many, measured as a user runs
// them (the kura binary, warm page cache), the two stores alternating run by
// run so that the machine's load falls on both alike. See README.md.

// scaleConfig is the scaling run's parameters.
type scaleConfig struct {
	work, out, kura string
	bases, versions int // images: bases × versions
	small           int // images in the small store
	runs            int
	shape           scaleShape
	profile         bool // write a CPU profile of every timed kura command
}

// opRun is one timed kura command: wall and CPU time, and the bytes it read
// and wrote through system calls (rchar, wchar of /proc/self/io, to which a
// reaped child's counts are added).
type opRun struct {
	Seconds, User, Sys float64
	RChar, WChar       int64
	IndexWritten       int64 `json:",omitempty"` // bytes written to chunk-index and its journal
}

// storeStats is what a store holds, for "proportional to what they must read".
type storeStats struct {
	Images, Layers, Objects int
	ObjectBytes, MetaBytes  int64 // objects/; layers/ + images/ + composefs/ + chunk index
	ChunkIndex, Journal     int64
}

// ScaleResults is everything the scaling run measured (scale.json).
type ScaleResults struct {
	Started    time.Time
	Shape      scaleShape
	Images     int
	Small      int
	Load       []string // /proc/loadavg at start, growth, end
	Stores     map[string]storeStats
	Ops        map[string]map[string][]opRun // op -> store label -> runs
	Growth     []opRun                       // imports that grew the store (index bytes per layer)
	Concurrent map[string][]float64          // "sequential", "concurrent": wall seconds of 4 pulls
	Profiles   []string                      `json:",omitempty"`
}

// runScale builds the two stores, measures, and writes scale.json and scale.md.
func runScale(ctx context.Context, sc scaleConfig) error {
	if sc.kura == "" {
		return fmt.Errorf("-scale needs -kura")
	}
	dir := filepath.Join(sc.work, "scale")
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	res := &ScaleResults{Started: time.Now(), Shape: sc.shape, Images: sc.bases * sc.versions, Small: sc.small,
		Stores: map[string]storeStats{}, Ops: map[string]map[string][]opRun{}, Concurrent: map[string][]float64{}}
	res.Load = append(res.Load, loadAvg())
	reg, err := startRegistry(ctx, filepath.Join(dir, "registry"), true)
	if err != nil {
		return err
	}
	defer reg.Stop()
	env := &scaleEnv{sc: sc, dir: dir, reg: reg.Addr, res: res}
	if err := env.buildStores(ctx); err != nil {
		return err
	}
	res.Load = append(res.Load, loadAvg())
	if err := env.pushUpdates(ctx); err != nil {
		return err
	}
	for run := 0; run < sc.runs; run++ {
		for k := range 2 {
			label := env.labels()[(run+k)%2]
			if err := env.cycle(ctx, label, run); err != nil {
				return fmt.Errorf("run %d on the %s store: %w", run, label, err)
			}
			log.Printf("scale: run %d on the %s-image store done", run+1, label)
		}
	}
	for _, label := range env.labels() {
		res.Stores[label] = statStore(env.store(label))
	}
	if err := env.concurrency(ctx); err != nil {
		return err
	}
	res.Load = append(res.Load, loadAvg())
	return writeScaleReport(sc.out, res)
}

// scaleEnv is the run's state: where stores and layouts live, the registry.
type scaleEnv struct {
	sc  scaleConfig
	dir string
	reg string
	res *ScaleResults
}

func (e *scaleEnv) labels() []string {
	return []string{strconv.Itoa(e.sc.small), strconv.Itoa(e.sc.bases * e.sc.versions)}
}

func (e *scaleEnv) store(label string) string { return filepath.Join(e.dir, "store-"+label) }

// imageAt is the i-th image of the corpus: versions interleave the bases, so
// the small store holds every base.
func (e *scaleEnv) imageAt(i int) (base, version int) { return i % e.sc.bases, i / e.sc.bases }

func scaleRef(base, version int) string { return fmt.Sprintf("b%dv%d", base, version) }

// buildStores imports the first images into the small store, copies it, and
// grows the copy to the whole corpus, recording what each import writes to
// the chunk index.
func (e *scaleEnv) buildStores(ctx context.Context) error {
	small, big := e.store(e.labels()[0]), e.store(e.labels()[1])
	total := e.sc.bases * e.sc.versions
	start := time.Now()
	for i := range total {
		if i == e.sc.small {
			if out, err := exec.CommandContext(ctx, "cp", "-a", small, big).CombinedOutput(); err != nil {
				return fmt.Errorf("copying the small store: %v: %s", err, out)
			}
		}
		target := small
		if i >= e.sc.small {
			target = big
		}
		b, v := e.imageAt(i)
		layout := filepath.Join(e.dir, "layout")
		if err := e.sc.shape.writeScaleLayout(layout, scaleRef(b, v), b, v); err != nil {
			return err
		}
		// Named as if pulled from the registry (REG/scale/bN:vM), so that the update pull finds
		// the newest version of its repository to predict its tar-split from, as a user's would.
		name := fmt.Sprintf("%s/scale/b%d:v%d", e.reg, b, v)
		r, err := e.kura(ctx, target, "import", "oci:"+layout+":"+scaleRef(b, v), name)
		if err != nil {
			return err
		}
		if i >= e.sc.small {
			e.res.Growth = append(e.res.Growth, r)
		}
		if (i+1)%20 == 0 {
			log.Printf("scale: %d/%d images imported (%.0fs)", i+1, total, time.Since(start).Seconds())
		}
	}
	return nil
}

// pushUpdates pushes, for each store, the next version of base 0 after the
// newest one it holds (its update: about 1 % new files and three new chunks,
// as between any two versions), and one new image per base for the
// concurrency run, with kura copy, to the registry.
func (e *scaleEnv) pushUpdates(ctx context.Context) error {
	tmp := filepath.Join(e.dir, "push-store")
	type push struct {
		base, version int
		tag           string
	}
	var pushes []push
	for _, label := range e.labels() {
		pushes = append(pushes, push{0, e.nextVersion(label), "update-" + label})
	}
	for b := 0; b < min(4, e.sc.bases); b++ {
		pushes = append(pushes, push{b, updateRelease + 1 + b, fmt.Sprintf("next%d", b)})
	}
	for _, p := range pushes {
		layout := filepath.Join(e.dir, "layout")
		if err := e.sc.shape.writeScaleLayout(layout, p.tag, p.base, p.version); err != nil {
			return err
		}
		args := append(append([]string{"--root", tmp, kuraPushCmd}, kuraRegistryFlags...),
			"oci:"+layout+":"+p.tag, "docker://"+e.reg+"/scale/b"+strconv.Itoa(p.base)+":"+p.tag)
		if out, err := exec.CommandContext(ctx, e.sc.kura, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("kura copy %s: %v: %s", p.tag, err, out)
		}
	}
	return os.RemoveAll(tmp)
}

// nextVersion is the version of base 0 after the newest the store holds.
func (e *scaleEnv) nextVersion(label string) int {
	n, _ := strconv.Atoi(label)
	return (n + e.sc.bases - 1) / e.sc.bases
}

// kura runs one kura command on store and measures it.
func (e *scaleEnv) kura(ctx context.Context, store string, args ...string) (opRun, error) {
	args = append([]string{"--root", store}, args...)
	if e.sc.profile {
		p := filepath.Join(e.sc.out, "scale-profiles", fmt.Sprintf("%s-%d.pprof", args[2], time.Now().UnixNano()))
		_ = os.MkdirAll(filepath.Dir(p), 0o755)
		args = append([]string{"--cpu-profile", p}, args...)
		e.res.Profiles = append(e.res.Profiles, p)
	}
	cmd := exec.CommandContext(ctx, e.sc.kura, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	before := indexBytes(store)
	r0, w0 := selfIO()
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start).Seconds()
	r1, w1 := selfIO()
	if err != nil {
		return opRun{}, fmt.Errorf("kura %s: %v: %s", strings.Join(args, " "), err, lastLine(out.String()))
	}
	ru := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	return opRun{Seconds: wall, User: tv(ru.Utime), Sys: tv(ru.Stime), RChar: r1 - r0, WChar: w1 - w0,
		IndexWritten: indexWritten(before, indexBytes(store))}, nil
}

func tv(t syscall.Timeval) float64 { return float64(t.Sec) + float64(t.Usec)/1e6 }

// selfIO returns rchar and wchar of this process, reaped children included.
func selfIO() (rchar, wchar int64) {
	b, err := os.ReadFile("/proc/self/io")
	if err != nil {
		return 0, 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ": ")
		n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		switch k {
		case "rchar":
			rchar = n
		case "wchar":
			wchar = n
		}
	}
	return rchar, wchar
}

// indexFile is what identifies one version of a chunk-index file.
type indexFile struct {
	ino, size int64
	mtime     time.Time
}

func statIndexFile(p string) indexFile {
	fi, err := os.Stat(p)
	if err != nil {
		return indexFile{}
	}
	return indexFile{ino: int64(fi.Sys().(*syscall.Stat_t).Ino), size: fi.Size(), mtime: fi.ModTime()}
}

func indexBytes(store string) [2]indexFile {
	return [2]indexFile{statIndexFile(filepath.Join(store, "chunk-index")), statIndexFile(filepath.Join(store, "chunk-index.journal"))}
}

// indexWritten is the bytes written to the chunk index between two states:
// the whole file when it was replaced, and what the journal grew by (all of
// it when it was started anew).
func indexWritten(a, b [2]indexFile) int64 {
	var n int64
	if b[0] != a[0] {
		n += b[0].size
	}
	switch {
	case b[1].size >= a[1].size && b[1].ino == a[1].ino:
		n += b[1].size - a[1].size
	case b[1].size > 0:
		n += b[1].size
	}
	return n
}

// statStore counts what a store holds.
func statStore(root string) storeStats {
	var st storeStats
	count := func(sub string, n *int, bytes *int64) {
		_ = filepath.WalkDir(filepath.Join(root, sub), func(p string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() {
				return nil
			}
			if fi, err := d.Info(); err == nil {
				*bytes += fi.Size()
				if n != nil {
					*n++
				}
			}
			return nil
		})
	}
	count("objects", &st.Objects, &st.ObjectBytes)
	var layerFiles, imageFiles int
	count("layers", &layerFiles, &st.MetaBytes)
	count("images", &imageFiles, &st.MetaBytes)
	count("composefs", nil, &st.MetaBytes)
	st.Layers, st.Images = dirEntries(filepath.Join(root, "layers")), dirEntries(filepath.Join(root, "images"))
	idx := indexBytes(root)
	st.ChunkIndex, st.Journal = idx[0].size, idx[1].size
	return st
}

// dirEntries counts the entries of a directory (layers/ and images/ hold one
// directory per layer or image).
func dirEntries(p string) int {
	ents, _ := os.ReadDir(p)
	return len(ents)
}

func saveJSON(p string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(p, b, 0o644)
}

// scaleFlagSet holds the -scale flags until main has parsed them.
type scaleFlagSet struct {
	enabled         bool
	bases, versions int
	small, runs     int
	files           int
	seed            uint64
	profile         bool
}

func scaleFlags() *scaleFlagSet {
	f := &scaleFlagSet{}
	flag.BoolVar(&f.enabled, "scale", false, "store scaling run (issue 19): a small store against the same store grown (see README.md)")
	flag.IntVar(&f.bases, "scale-bases", 4, "-scale: bases")
	flag.IntVar(&f.versions, "scale-versions", 50, "-scale: versions of each base")
	flag.IntVar(&f.small, "scale-small", 10, "-scale: images in the small store")
	flag.IntVar(&f.runs, "scale-runs", 5, "-scale: runs of each operation on each store")
	flag.IntVar(&f.files, "scale-files", 3000, "-scale: small files per image (plus 3 multi-chunk ones)")
	flag.Uint64Var(&f.seed, "scale-seed", 1, "-scale: seed of the generated trees")
	flag.BoolVar(&f.profile, "scale-profile", false, "-scale: write a CPU profile of every timed kura command to OUT/scale-profiles")
	return f
}

// runScaleMain runs the scaling measurement with the main flags' work, out and kura.
func runScaleMain(cfg config, f *scaleFlagSet) {
	if os.Geteuid() != 0 {
		log.Fatal("-scale must run as root (mounts)")
	}
	if f.bases < 1 || f.small < 1 || f.bases*f.versions <= f.small || f.runs < 1 || f.files < f.bases {
		log.Fatalf("-scale: want bases ≥ 1, bases×versions > small ≥ 1, runs ≥ 1")
	}
	shape := defaultScaleShape(f.seed)
	shape.Files = f.files
	sc := scaleConfig{work: cfg.work, out: cfg.out, kura: cfg.kura, bases: f.bases, versions: f.versions,
		small: f.small, runs: f.runs, shape: shape, profile: f.profile}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := runScale(ctx, sc); err != nil {
		log.Fatal(err)
	}
	log.Printf("scale: results in %s/scale.md and scale.json", cfg.out)
}
