package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// The page cache of ten running containers, one per version, each reading the files common to
// all versions, charged to the containers' memory cgroups as the containerd harness does
// (ctdbench.go): /proc/meminfo's Cached, Buffers and SReclaimable are the whole machine's, and
// moved by tens of MB with the other work on this shared VM, and slab pages a first set-up
// allocated are reused by the next one after a drop (the drop frees objects, not always their
// pages), which favoured whichever set-up was measured last. A page or a slab object is charged
// to the memory cgroup of the task that brings it in, so the growth of the containers' parent
// cgroup counts exactly what the ten readers cost, whatever else the machine does: podman's,
// conmon's and runc's own pages and those of Kura's server are in other cgroups.

// ALSPageCache is one measure of one set-up.
type ALSPageCache struct {
	Tool  string `json:"tool"`
	Pass  int    `json:"pass"`  // passes alternate the order of the set-ups
	Order int    `json:"order"` // this set-up's place in its pass (0: measured first)
	// Charged: growth of the page cache charged to the ten containers' cgroups (v1 memory.stat
	// total_cache, v2 file): file pages and the block device's (ext4 metadata) alike.
	Charged int64 `json:"charged"`
	// Kernel: growth of the kernel memory charged to them (v1 memory.kmem.usage_in_bytes, v2
	// kernel): dentries, inodes (ext4, overlayfs, EROFS), buffer heads, what mincore cannot see.
	Kernel      int64            `json:"kernel"`
	CachedDelta int64            `json:"cachedDelta"` // /proc/meminfo Cached, the whole machine
	Resident    int64            `json:"resident"`    // mincore over the set-up's storage
	ResidentBy  map[string]int64 `json:"residentBy,omitempty"`
	Error       string           `json:"error,omitempty"`
}

// alsPageCachePasses runs ten containers per set-up (under a private cgroup parent each) and
// measures every set-up twice, the second pass in the reverse order, each measure from dropped
// page cache, dentries and inodes (drop_caches 3).
func alsPageCachePasses(ctx context.Context, envs []*alsEnv, common *ReadSet, refs []string) []ALSPageCache {
	var out []ALSPageCache
	started := make([]error, len(envs))
	for k, e := range envs {
		started[k] = e.startReaders(ctx, common, refs)
		defer e.stopReaders()
	}
	for pass := 1; pass <= 2; pass++ {
		for j := range envs {
			k := j
			if pass == 2 {
				k = len(envs) - 1 - j
			}
			pc := ALSPageCache{Tool: envs[k].tool.name, Pass: pass, Order: j}
			if started[k] != nil {
				pc.Error = started[k].Error()
			} else {
				envs[k].measureReaders(ctx, len(refs), &pc)
			}
			log.Printf("als page cache pass %d %s: charged %.1f MB, kernel %.1f MB, Cached %.1f MB, resident %.1f MB %s",
				pass, pc.Tool, mb(pc.Charged), mb(pc.Kernel), mb(pc.CachedDelta), mb(pc.Resident), pc.Error)
			out = append(out, pc)
		}
	}
	return out
}

// readerName is the name of the i-th page-cache container.
func readerName(i int) string { return fmt.Sprintf("kura-bench-als-reader%d", i) }

// cgroupParent is the private cgroup parent of this set-up's page-cache containers.
func (e *alsEnv) cgroupParent() string {
	return fmt.Sprintf("/kura-bench-als-%s-%d", filepath.Base(e.dir), os.Getpid())
}

// startReaders starts one idle container per version (sleep), each with the list of the common
// files bound in, under the set-up's cgroup parent. Starting them is not measured: what they
// cost to start (podman's binaries, the image's mount) is another question than what reading
// the same files costs ten containers.
func (e *alsEnv) startReaders(ctx context.Context, common *ReadSet, refs []string) error {
	list := filepath.Join(e.dir, "common.list")
	if err := writeFileList(list, common.Files); err != nil {
		return err
	}
	for i, ref := range refs {
		args := append([]string{"run", "-d", "--name", readerName(i), "--cgroup-parent", e.cgroupParent(), "--network", "none"}, alsUlimits...)
		args = append(args, "-v", list+":/kura-bench-common.list:ro", ref, "sleep", "infinity")
		if out, err := e.podman(ctx, args...).CombinedOutput(); err != nil {
			return fmt.Errorf("podman run %s: %v: %s", ref, err, tail(string(out), 300))
		}
	}
	return nil
}

// stopReaders removes the containers and their cgroup parent (every controller's). conmon's
// cgroup empties a moment after `podman rm` returns (conmon exits after its container), so the
// removal is tried again for a few seconds.
func (e *alsEnv) stopReaders() {
	_ = e.podman(context.Background(), "rm", "--all", "--force", "--time", "0").Run()
	for deadline := time.Now().Add(10 * time.Second); ; {
		left := e.removeCgroups()
		if left == nil || time.Now().After(deadline) {
			if left != nil {
				log.Printf("als page cache %s: cgroups left: %v", e.tool.name, left)
			}
			return
		}
		time.Sleep(50 * time.Millisecond) // polling for conmon's exit, which nothing signals to us
	}
}

// removeCgroups removes the cgroup parent's directories and returns those that remain.
func (e *alsEnv) removeCgroups() []string {
	dirs, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", e.cgroupParent()))
	if d := filepath.Join("/sys/fs/cgroup", e.cgroupParent()); dirExists(d) {
		dirs = append(dirs, d)
	}
	var left []string
	for _, d := range dirs {
		subs, _ := filepath.Glob(filepath.Join(d, "*", "cgroup.procs"))
		for _, s := range subs {
			_ = os.Remove(filepath.Dir(s))
		}
		if err := os.Remove(d); err != nil && !os.IsNotExist(err) {
			left = append(left, d)
		}
	}
	return left
}

func dirExists(p string) bool {
	fi, err := os.Stat(p)
	return err == nil && fi.IsDir()
}

// measureReaders drops caches, has every container read the common files (two at a time) and
// takes the growth charged to the cgroup parent. Other work that dropped caches during the
// measure (seen in /proc/vmstat: drop_pagecache, or drop_slab alone for `echo 2`) makes it
// taken again: it would have freed what the readers were charged.
func (e *alsEnv) measureReaders(ctx context.Context, n int, pc *ALSPageCache) {
	read := func(name string) error {
		cmd := e.podman(ctx, "exec", name, "sh", "-c", "xargs -0 -a /kura-bench-common.list cat > /dev/null")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("podman exec %s: %v: %s", name, err, tail(string(out), 300))
		}
		return nil
	}
	var names []string
	for i := 0; i < n; i++ {
		names = append(names, readerName(i))
	}
	for attempt := 1; attempt <= 4; attempt++ {
		var drops int64
		var before cgroupMem
		var err error
		pc.CachedDelta, err = cachedDelta(func() error {
			drops = vmstat("drop_pagecache") + vmstat("drop_slab")
			if before, err = readCgroupMem(e.cgroupParent()); err != nil {
				return err
			}
			return eachRef(names, read)
		})
		if err != nil {
			pc.Error = err.Error()
			return
		}
		after, err := readCgroupMem(e.cgroupParent())
		if err != nil {
			pc.Error = err.Error()
			return
		}
		pc.Charged, pc.Kernel = after.file-before.file, after.kernel-before.kernel
		pc.Resident, pc.ResidentBy = e.resident()
		if vmstat("drop_pagecache")+vmstat("drop_slab") == drops { // echo 2 drops only slab
			pc.Error = ""
			return
		}
		log.Printf("als page cache %s: someone dropped the caches during the measure (attempt %d); again", e.tool.name, attempt)
		pc.Error = "the caches were dropped by other work during every attempt"
	}
}

// resident is mincore over the set-up's storage: podman's, and for Kura its store (objects)
// and per-layer composefs images (not the mounts: the walk would meet the same pages again).
func (e *alsEnv) resident() (int64, map[string]int64) {
	roots := map[string]string{"podman storage": filepath.Join(e.pod.root, "overlay")}
	if e.tool.kura {
		roots["Kura store"] = filepath.Join(e.dir, "store")
		roots["composefs images"] = filepath.Join(e.dir, "state", "composefs")
	}
	by := map[string]int64{}
	var total int64
	for k, dir := range roots {
		n, err := residentBytesXdev(dir)
		if err != nil {
			log.Printf("als page cache %s: mincore %s: %v", e.tool.name, dir, err)
		}
		by[k] = n
		total += n
	}
	return total, by
}

// residentBytesXdev is residentBytes within root's file system: the running containers' merged
// overlays are mounted inside podman's storage, and walking them would count the store's pages
// once per container (an overlay file's mapping is the file's below it).
func residentBytesXdev(root string) (int64, error) {
	rfi, err := os.Stat(root)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	rootDev := uint64(rfi.Sys().(*syscall.Stat_t).Dev)
	type inode struct{ dev, ino uint64 }
	seen := map[inode]bool{}
	var total int64
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			if os.IsNotExist(err) || os.IsPermission(err) {
				return nil
			}
			return err
		}
		if !d.IsDir() && !d.Type().IsRegular() {
			return nil
		}
		fi, err := d.Info()
		if err != nil {
			return nil
		}
		st := fi.Sys().(*syscall.Stat_t)
		if uint64(st.Dev) != rootDev {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		key := inode{uint64(st.Dev), st.Ino}
		if d.IsDir() || fi.Size() == 0 || seen[key] {
			return nil
		}
		seen[key] = true
		if n, err := residentInFile(p, fi.Size()); err == nil {
			total += n * int64(os.Getpagesize())
		}
		return nil
	})
	return total, err
}

// cgroupMem is what a memory cgroup and its descendants are charged.
type cgroupMem struct{ file, kernel int64 }

// readCgroupMem reads the charges of a cgroup: v1 (memory.stat total_cache, and
// memory.kmem.usage_in_bytes), else v2 (memory.stat file and kernel, or slab before 5.18).
func readCgroupMem(cg string) (cgroupMem, error) {
	var m cgroupMem
	v1 := filepath.Join("/sys/fs/cgroup/memory", cg)
	if st, err := readKeyed(filepath.Join(v1, "memory.stat")); err == nil {
		b, err := os.ReadFile(filepath.Join(v1, "memory.kmem.usage_in_bytes"))
		if err != nil {
			return m, fmt.Errorf("cgroup v1 kernel memory of %s: %w", cg, err)
		}
		_, err = fmt.Sscan(string(b), &m.kernel)
		m.file = st["total_cache"]
		return m, err
	}
	st, err := readKeyed(filepath.Join("/sys/fs/cgroup", cg, "memory.stat"))
	if err != nil {
		return m, fmt.Errorf("no memory cgroup %s (v1 or v2): %w", cg, err)
	}
	m.file, m.kernel = st["file"], st["kernel"]
	if _, ok := st["kernel"]; !ok {
		m.kernel = st["slab"]
	}
	return m, nil
}

// readKeyed reads a "key value" file such as memory.stat.
func readKeyed(path string) (map[string]int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for _, l := range strings.Split(string(b), "\n") {
		var k string
		var v int64
		if _, err := fmt.Sscan(l, &k, &v); err == nil {
			out[k] = v
		}
	}
	if len(out) == 0 {
		return nil, errors.New(path + ": empty")
	}
	return out, nil
}
