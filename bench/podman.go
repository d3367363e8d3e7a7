package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// PushResult is one skopeo (or kura) push.
type PushResult struct {
	Version        string   `json:"version"`
	Tool           string   `json:"tool"`
	Seconds        float64  `json:"seconds"`
	CompressedSize int64    `json:"compressedSize"` // the layer blob in the registry
	MediaType      string   `json:"mediaType"`
	Annotations    []string `json:"annotations"` // layer annotation keys
	// TOCSize and TarSplitSize are the compressed lengths of the blob's TOC
	// and tar-split frames (from the position annotations; the new format's
	// when both sets are there): the metadata a partial pull fetches besides
	// file frames. TarSplitSize is 0 for the old format.
	TOCSize      int64 `json:"tocSize"`
	TarSplitSize int64 `json:"tarSplitSize"`
}

// Layer annotations giving the position of the zstd:chunked metadata frames
// as "offset:length:uncompressed length[:type]".
const (
	annotationTOCPosition      = "io.github.containers.zstd-chunked.manifest-position"
	annotationOldTOCPosition   = "io.containers.zstd-chunked.manifest-position"
	annotationTarSplitPosition = "io.github.containers.zstd-chunked.tarsplit-position"
)

// positionLength returns the length field of a position annotation.
func positionLength(v string) (int64, error) {
	f := strings.Split(v, ":")
	if len(f) < 3 {
		return 0, fmt.Errorf("position %q: want offset:length:uncompressed[:type]", v)
	}
	n, err := strconv.ParseInt(f[1], 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("position %q: bad length", v)
	}
	return n, nil
}

// PullResult is one pull of one version.
type PullResult struct {
	Version   string  `json:"version"`
	Seconds   float64 `json:"seconds"`
	Traffic   Traffic `json:"traffic"`
	DiskAfter int64   `json:"diskAfter"` // du -sb of the store after this pull
	Skipped   string  `json:"skipped,omitempty"`
	Error     string  `json:"error,omitempty"`
	// Requests is every request of this pull as the proxy saw it.
	Requests []Request `json:"requests,omitempty"`
}

// PageCache is the page cache ten containers (or mounts) use for the read set.
type PageCache struct {
	Method      string  `json:"method"`
	Containers  int     `json:"containers"`
	CachedDelta int64   `json:"cachedDelta"` // /proc/meminfo Cached after - before, readers
	Overhead    int64   `json:"overhead"`    // same for containers that read nothing
	Resident    int64   `json:"resident"`    // mincore of the store's files after the readers
	Seconds     float64 `json:"seconds"`
	Error       string  `json:"error,omitempty"`
	// ResidentBy splits Resident by part of the store (kura: objects,
	// composefs images, other).
	ResidentBy map[string]int64 `json:"residentBy,omitempty"`
	// One is a single reader (of the last version) of the same read set,
	// measured the same way, so Resident / One.Resident is "ten against one".
	One *Residency `json:"one,omitempty"`
	// CommonTen and CommonOne are ten readers and one reader of the files
	// whose content is the same in all versions (the common read set).
	CommonTen *Residency `json:"commonTen,omitempty"`
	CommonOne *Residency `json:"commonOne,omitempty"`
}

// SystemResult is everything measured for one puller configuration.
type SystemResult struct {
	Name       string       `json:"name"`
	Repo       string       `json:"repo,omitempty"` // repository pulled (whose blobs' metadata counts)
	Skipped    bool         `json:"skipped"`
	SkipReason string       `json:"skipReason,omitempty"`
	Push       []PushResult `json:"push,omitempty"` // when this system pushed its own images
	Pulls      []PullResult `json:"pulls"`
	PageCache  *PageCache   `json:"pageCache,omitempty"`
	Notes      []string     `json:"notes,omitempty"`
}

const appRepo = "bench/app"

// skopeoPushAll pushes every version as zstd:chunked with skopeo 1.9 (the old
// zstd:chunked format that podman 4.3 can pull partially). skopeo compresses
// on one core, so two pushes run at a time.
func skopeoPushAll(ctx context.Context, c *Corpus, p *proxy) ([]PushResult, Traffic, error) {
	out := make([]PushResult, len(c.Versions))
	errs := make([]error, len(c.Versions))
	mark := p.Begin("skopeo push")
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, v := range c.Versions {
		sem <- struct{}{} // taken here so versions start in order
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			start := time.Now()
			cmd := exec.CommandContext(ctx, "skopeo", "copy", "--quiet",
				"--dest-compress-format", "zstd:chunked", "--dest-tls-verify=false",
				"oci:"+v.Layout+":"+v.Name, "docker://"+p.Addr+"/"+appRepo+":"+v.Name)
			if b, err := cmd.CombinedOutput(); err != nil {
				errs[i] = fmt.Errorf("skopeo push %s: %w\n%s", v.Name, err, b)
				return
			}
			r := PushResult{Version: v.Name, Tool: "skopeo", Seconds: time.Since(start).Seconds()}
			if err := inspectLayer(ctx, p.Addr, appRepo, v.Name, &r); err != nil {
				errs[i] = err
				return
			}
			log.Printf("push %s: %.1fs, layer %.1f MB %s", v.Name, r.Seconds, mb(r.CompressedSize), r.MediaType)
			out[i] = r
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, Traffic{}, err
	}
	traffic := sumTraffic(p.Since(mark))
	p.Begin("")
	return out, traffic, nil
}

// inspectLayer reads the pushed manifest to learn the layer's compressed size
// and which zstd:chunked annotations the writer put on it.
func inspectLayer(ctx context.Context, addr, repo, tag string, r *PushResult) error {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/v2/"+repo+"/manifests/"+tag, nil)
	req.Header.Set("Accept", "application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("fetching manifest %s:%s: %w", repo, tag, err)
	}
	defer resp.Body.Close()
	var m struct {
		Layers []struct {
			MediaType   string            `json:"mediaType"`
			Size        int64             `json:"size"`
			Annotations map[string]string `json:"annotations"`
		} `json:"layers"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 4<<20)).Decode(&m); err != nil || len(m.Layers) != 1 {
		return fmt.Errorf("manifest %s:%s: want one layer (status %s, err %v)", repo, tag, resp.Status, err)
	}
	l := m.Layers[0]
	r.CompressedSize, r.MediaType, r.Annotations = l.Size, l.MediaType, nil
	for k := range l.Annotations {
		r.Annotations = append(r.Annotations, k)
	}
	slices.Sort(r.Annotations)
	r.TOCSize, r.TarSplitSize = 0, 0
	for _, k := range []string{annotationTOCPosition, annotationOldTOCPosition} {
		if v, ok := l.Annotations[k]; ok {
			n, err := positionLength(v)
			if err != nil {
				return fmt.Errorf("manifest %s:%s: %s: %w", repo, tag, k, err)
			}
			r.TOCSize = n
			break
		}
	}
	if v, ok := l.Annotations[annotationTarSplitPosition]; ok {
		n, err := positionLength(v)
		if err != nil {
			return fmt.Errorf("manifest %s:%s: %s: %w", repo, tag, annotationTarSplitPosition, err)
		}
		r.TarSplitSize = n
	}
	return nil
}

// refreshLayerInfo reads the layer facts of pushes reused from an earlier
// run again from the registry (the cache may predate some fields).
func refreshLayerInfo(ctx context.Context, addr, repo string, pushes []PushResult) error {
	for i := range pushes {
		if err := inspectLayer(ctx, addr, repo, pushes[i].Version, &pushes[i]); err != nil {
			return err
		}
	}
	return nil
}

// podmanEnv is one private podman installation: storage, configuration and
// the flags every command needs.
type podmanEnv struct {
	dir, root, runroot string
	env                []string
}

// newPodmanEnv sets up a private podman installation in dir, emptied first.
func newPodmanEnv(dir string, hardLinks bool, registryAddr string) (*podmanEnv, error) {
	if err := removeTree(dir); err != nil {
		return nil, err
	}
	e := &podmanEnv{dir: dir, root: filepath.Join(dir, "root"), runroot: podmanRunroot(dir)}
	if err := removeTree(e.runroot); err != nil {
		return nil, err
	}
	for _, d := range []string{e.root, e.runroot, filepath.Join(dir, "tmp")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, err
		}
	}
	files := map[string]string{
		"storage.conf": fmt.Sprintf(`[storage]
driver = "overlay"
graphroot = %q
runroot = %q

[storage.options]
pull_options = {enable_partial_images = "true", use_hard_links = "%v"}
`, e.root, e.runroot, hardLinks),
		"registries.conf": fmt.Sprintf(`unqualified-search-registries = []

[[registry]]
location = %q
insecure = true
`, registryAddr),
		// No systemd here: cgroupfs and a file event log; crun fails on this
		// cgroup setup, runc works.
		"containers.conf": fmt.Sprintf(`[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
tmp_dir = %q
`, filepath.Join(dir, "tmp")),
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			return nil, err
		}
	}
	e.env = append(os.Environ(),
		"CONTAINERS_STORAGE_CONF="+filepath.Join(dir, "storage.conf"),
		"CONTAINERS_REGISTRIES_CONF="+filepath.Join(dir, "registries.conf"),
		"CONTAINERS_CONF="+filepath.Join(dir, "containers.conf"))
	return e, nil
}

// podmanRunroot is the run root of the podman installation in dir. podman
// refuses a run root longer than 50 characters, which a work dir deeper than
// the default would pass, so it lives under /run with a name derived from dir.
func podmanRunroot(dir string) string {
	sum := sha256.Sum256([]byte(dir))
	return fmt.Sprintf("/run/kura-bench-%x", sum[:6])
}

// remove deletes the installation: storage, configuration and run root.
func (e *podmanEnv) remove() error {
	return errors.Join(removeTree(e.dir), removeTree(e.runroot))
}

func (e *podmanEnv) args(a ...string) []string {
	return append([]string{"--root", e.root, "--runroot", e.runroot, "--storage-driver", "overlay"}, a...)
}

func (e *podmanEnv) command(ctx context.Context, a ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, "podman", e.args(a...)...)
	cmd.Env = e.env
	return cmd
}

// skippedRE matches podman's progress line "skipped: 61.2MiB = 93.26%".
var skippedRE = regexp.MustCompile(`skipped: ([0-9.]+ ?[KMGTkmgt]?i?[Bb]) = ([0-9.]+)%`)

// pull runs podman pull under script(1): podman prints its "skipped:"
// figure only when stdout is a terminal.
func (e *podmanEnv) pull(ctx context.Context, ref string) (string, error) {
	// A pty from script(1) has no size; without one the bars are cut to "…".
	line := "stty cols 200 rows 50; podman " + shellJoin(e.args("pull", "--tls-verify=false", ref))
	cmd := exec.CommandContext(ctx, "script", "-qfec", line, "/dev/null")
	cmd.Env = append(e.env, "TERM=xterm")
	out, err := cmd.CombinedOutput()
	_ = os.WriteFile(filepath.Join(e.dir, "pull-"+filepath.Base(strings.ReplaceAll(ref, ":", "-"))+".log"), out, 0o644)
	if err != nil {
		return "", fmt.Errorf("podman pull %s: %w\n%s", ref, err, tail(string(out), 2000))
	}
	skipped := ""
	for _, m := range skippedRE.FindAllStringSubmatch(string(out), -1) {
		skipped = m[1] + " = " + m[2] + "%" // the last progress update is the final one
	}
	return skipped, nil
}

// runPodman pulls every version in order into a fresh podman storage and
// measures traffic, time, disk, then page cache with one container each.
func runPodman(ctx context.Context, cfg config, c *Corpus, p *proxy, hardLinks bool) (*SystemResult, error) {
	sys := &SystemResult{Name: fmt.Sprintf("podman use_hard_links=%v", hardLinks), Repo: appRepo}
	e, err := newPodmanEnv(filepath.Join(cfg.work, fmt.Sprintf("podman-hardlinks-%v", hardLinks)), hardLinks, p.Addr)
	if err != nil {
		return nil, err
	}
	var refs []string
	for _, v := range c.Versions {
		ref := p.Addr + "/" + appRepo + ":" + v.Name
		refs = append(refs, ref)
		mark := p.Begin(sys.Name + " pull " + v.Name)
		start := time.Now()
		skipped, err := e.pull(ctx, ref)
		reqs := p.Since(mark)
		r := PullResult{Version: v.Name, Seconds: time.Since(start).Seconds(), Traffic: sumTraffic(reqs), Skipped: skipped, Requests: reqs}
		p.Begin("")
		if err != nil {
			return nil, err
		}
		if r.DiskAfter, err = duBytes(e.root); err != nil {
			return nil, err
		}
		log.Printf("%s pull %s: %.1fs, requested %.2f MB, received %.2f MB (%d requests, %d ranges, %d plain blob GETs), skipped %q, disk %.1f MB",
			sys.Name, v.Name, r.Seconds, mb(r.Traffic.Requested), mb(r.Traffic.Received), r.Traffic.Requests,
			r.Traffic.Ranges, r.Traffic.PlainBlobGets, r.Skipped, mb(r.DiskAfter))
		sys.Pulls = append(sys.Pulls, r)
	}
	sys.PageCache = podmanPageCache(ctx, cfg, c, e, refs)
	if !cfg.keep {
		// Free the storage now; the next configuration needs the disk and
		// page cache figures must not mix.
		if err := e.remove(); err != nil {
			sys.Notes = append(sys.Notes, "cleanup: "+err.Error())
		}
	}
	return sys, nil
}

// podmanPageCache runs one container per version, each reading the same file
// set, and reports the page cache they add. If podman run fails here, it
// falls back to podman image mount and reads the mounted trees.
func podmanPageCache(ctx context.Context, cfg config, c *Corpus, e *podmanEnv, refs []string) *PageCache {
	pc := &PageCache{Method: "podman run (runc)", Containers: len(refs)}
	start := time.Now()
	readCmd := "find " + strings.Join(cfg.readSet, " ") + " -type f -print0 | xargs -0 cat > /dev/null"
	run := func(ref string, script string, extra ...string) error {
		args := append([]string{"run", "--rm", "--runtime", "runc", "--network=none",
			"--ulimit", "nofile=20000:20000", "--ulimit", "nproc=1000:1000"}, extra...)
		cmd := e.command(ctx, append(args, ref, "sh", "-c", script)...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("podman run %s: %w: %s", ref, err, tail(string(b), 500))
		}
		return nil
	}
	// Warm podman's own binaries so they do not count.
	if err := run(refs[0], "true"); err != nil {
		log.Printf("podman run does not work here (%v); using podman image mount", err)
		pc.Error = err.Error()
		return podmanMountPageCache(ctx, cfg, e, refs, pc)
	}
	overhead, err := cachedDelta(func() error {
		return eachRef(refs, func(r string) error { return run(r, "true") })
	})
	if err != nil {
		pc.Error = err.Error()
		return pc
	}
	delta, err := cachedDelta(func() error {
		return eachRef(refs, func(r string) error { return run(r, readCmd) })
	})
	if err != nil {
		pc.Error = err.Error()
		return pc
	}
	pc.Overhead, pc.CachedDelta = overhead, delta
	layers := filepath.Join(e.root, "overlay")
	pc.Resident, err = residentBytes(layers)
	if err != nil {
		pc.Error = err.Error()
	}
	log.Printf("page cache %s: Cached +%.1f MB (containers alone +%.1f MB), store resident %.1f MB",
		pc.Method, mb(pc.CachedDelta), mb(pc.Overhead), mb(pc.Resident))

	// The same measure for one container, then for the files every version
	// has in common (a list bind-mounted into the container).
	last := refs[len(refs)-1]
	one := measureResidency(1, func() error { return run(last, readCmd) }, layers, nil)
	pc.One = &one
	if common := c.commonSet(); common != nil {
		list := filepath.Join(e.dir, "common.list")
		if err := writeFileList(list, common.Files); err != nil {
			pc.Error = err.Error()
			return pc
		}
		listArgs := []string{"-v", list + ":/kura-bench-common.list:ro"}
		listCmd := "xargs -0 -a /kura-bench-common.list cat > /dev/null"
		ten := measureResidency(len(refs), func() error {
			return eachRef(refs, func(r string) error { return run(r, listCmd, listArgs...) })
		}, layers, nil)
		one := measureResidency(1, func() error { return run(last, listCmd, listArgs...) }, layers, nil)
		pc.CommonTen, pc.CommonOne = &ten, &one
	}
	pc.Seconds = time.Since(start).Seconds()
	logResidency(pc)
	return pc
}

// logResidency prints the ten-against-one figures of a page cache measure.
func logResidency(pc *PageCache) {
	if pc.One != nil {
		log.Printf("page cache %s, read set: ten readers %.1f MB, one %.1f MB resident", pc.Method, mb(pc.Resident), mb(pc.One.Resident))
	}
	if pc.CommonTen != nil && pc.CommonOne != nil {
		log.Printf("page cache %s, common files: ten readers %.1f MB, one %.1f MB resident", pc.Method, mb(pc.CommonTen.Resident), mb(pc.CommonOne.Resident))
	}
}

// containersAtOnce is how many page-cache containers run at the same time.
// Starting a container is mostly waiting (runc, conmon, mounts), so two at
// a time halve the phase; the page cache they leave is the same.
const containersAtOnce = 2

// eachRef runs fn for every ref, containersAtOnce at a time, and returns
// all errors.
func eachRef(refs []string, fn func(ref string) error) error {
	errs := make([]error, len(refs))
	sem := make(chan struct{}, containersAtOnce)
	var wg sync.WaitGroup
	for i, r := range refs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			errs[i] = fn(r)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

func podmanMountPageCache(ctx context.Context, cfg config, e *podmanEnv, refs []string, pc *PageCache) *PageCache {
	pc.Method = "podman image mount"
	start := time.Now()
	var mounts []string
	defer func() {
		_ = e.command(context.Background(), "image", "unmount", "--all").Run()
	}()
	for _, r := range refs {
		b, err := e.command(ctx, "image", "mount", r).Output()
		if err != nil {
			pc.Error += "; podman image mount: " + err.Error()
			return pc
		}
		mounts = append(mounts, strings.TrimSpace(string(b)))
	}
	delta, err := cachedDelta(func() error {
		for _, m := range mounts {
			if err := readTrees(m, cfg.readSet); err != nil {
				return err
			}
		}
		return nil
	})
	pc.CachedDelta = delta
	if err != nil {
		pc.Error += "; " + err.Error()
	}
	pc.Resident, _ = residentBytes(filepath.Join(e.root, "overlay"))
	pc.Seconds = time.Since(start).Seconds()
	return pc
}

// removeTree unmounts anything left mounted below dir by an earlier run
// (overlay mounts of podman) and removes it.
func removeTree(dir string) error {
	if err := unmountTree(dir); err != nil {
		return err
	}
	return os.RemoveAll(dir)
}

// unmountTree detaches every mount at or under dir, the deepest first.
func unmountTree(dir string) error {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 4 && (fields[4] == dir || strings.HasPrefix(fields[4], dir+"/")) {
			mounts = append(mounts, fields[4])
		}
	}
	f.Close()
	for i := len(mounts) - 1; i >= 0; i-- {
		if err := syscall.Unmount(mounts[i], syscall.MNT_DETACH); err != nil {
			return fmt.Errorf("unmounting %s: %w", mounts[i], err)
		}
	}
	return nil
}

// duBytes is `du -sb`: apparent sizes, each hard-linked inode counted once.
func duBytes(dir string) (int64, error) {
	b, err := exec.Command("du", "-sb", dir).Output()
	if err != nil {
		return 0, fmt.Errorf("du %s: %w", dir, err)
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0, fmt.Errorf("du %s: no output", dir)
	}
	return strconv.ParseInt(f[0], 10, 64)
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

func tail(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}

// pushCache records that a registry root holds a corpus pushed by skopeo, so
// a rerun can skip the slowest step (skopeo compresses on one core).
type pushCache struct {
	Stamp    string       `json:"stamp"`
	Layers   []string     `json:"layers"` // uncompressed layer digests, in version order
	When     time.Time    `json:"when"`
	Push     []PushResult `json:"push"`
	Seconds  float64      `json:"seconds"`
	Uploaded int64        `json:"uploaded"`
}

func corpusLayers(c *Corpus) []string {
	var l []string
	for _, v := range c.Versions {
		l = append(l, v.LayerDigest.String())
	}
	return l
}

func loadPushCache(root string, c *Corpus) (*pushCache, error) {
	return loadPushCacheFile(filepath.Join(root, "pushed.json"), c)
}

func loadPushCacheFile(path string, c *Corpus) (*pushCache, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pc pushCache
	if err := json.Unmarshal(b, &pc); err != nil {
		return nil, err
	}
	if pc.Stamp != c.Stamp || !slices.Equal(pc.Layers, corpusLayers(c)) || len(pc.Push) != len(c.Versions) {
		return nil, fmt.Errorf("%s: the registry holds another corpus", path)
	}
	return &pc, nil
}

func savePushCache(root string, c *Corpus, res *Results) error {
	return writePushCacheFile(filepath.Join(root, "pushed.json"), pushCache{Stamp: c.Stamp, Layers: corpusLayers(c),
		When: res.Started, Push: res.Push, Seconds: res.PushSeconds, Uploaded: res.PushUploaded})
}

func writePushCacheFile(path string, pc pushCache) error {
	b, err := json.MarshalIndent(pc, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// settleRemovals waits until files removed before it no longer slow the next creations: this
// machine's root ext4 has no journal, and then the kernel's inode allocator skips, one by one,
// every inode freed in the last minute (recently_deleted in find_inode_bit; five minutes while
// the inode table block is dirty, hence the sync first). A set-up started right after another
// one's daemons removed their files (containerd's snapshots, stargz's chunk cache) would create
// each file in time proportional to those removals: a lazy pull's 7,446 placeholders took 3 s
// instead of 0.2 s. Untimed, between rounds only.
func settleRemovals(ctx context.Context) error {
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil {
		return fmt.Errorf("sync: %w", err)
	}
	log.Printf("settling 65 s: inodes freed in the last minute slow the next creations on this ext4")
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(65 * time.Second): // a harness pause, not synchronisation
		return nil
	}
}
