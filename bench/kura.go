package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// ---------------------------------------------------------------------------
// KURA HOOKS. The kura command lines the harness runs live here and only
// here; adjust them when the CLI changes. Each hook is skipped, with a clear
// message in the report, while `kura help <command>` does not know it.
//
// Syntax (global --root selects the store):
//   kura copy --tls-verify=false oci:LAYOUT:TAG docker://REGISTRY/REPO:TAG   (the push: layout -> registry)
//   kura --root STORE pull --tls-verify=false REGISTRY/REPO:TAG
//   kura --root STORE mount REGISTRY/REPO:TAG MOUNTPOINT     (composefs)
//   kura --root STORE umount MOUNTPOINT                      (else plain umount(2))
//   kura --root STORE checkout --link hardlink IMAGE DIR     (page cache if mount is missing)
// ---------------------------------------------------------------------------

// kuraRegistryFlags are extra flags for push and pull against the plain-HTTP
// loopback registry.
var kuraRegistryFlags = []string{"--tls-verify=false"}

// kuraPushCmd is the subcommand that sends an OCI layout to a registry.
const kuraPushCmd = "copy"

func kuraPushArgs(store, layout, tag, ref string) []string {
	return append(append([]string{"--root", store, kuraPushCmd}, kuraRegistryFlags...), "oci:"+layout+":"+tag, "docker://"+ref)
}

func kuraPullArgs(store, ref string) []string {
	return append(append([]string{"--root", store, "pull"}, kuraRegistryFlags...), ref)
}

func kuraMountArgs(store, ref, mountpoint string) []string {
	return []string{"--root", store, "mount", ref, mountpoint}
}

func kuraUmountArgs(store, mountpoint string) []string {
	return []string{"--root", store, "umount", mountpoint}
}

func kuraCheckoutArgs(store, ref, dir string) []string {
	return []string{"--root", store, "checkout", "--link", "hardlink", ref, dir}
}

// kuraRepo is where kura pushes its own zstd:chunked images (with tar-split,
// both annotation sets); skopeo's old-format images are in appRepo.
const kuraRepo = "bench/kura"

// END OF KURA HOOKS.
// ---------------------------------------------------------------------------

// kuraHas reports whether the kura binary knows a subcommand. Cobra exits 0
// for unknown help topics (and prints the root help when there are no
// subcommands at all), so the subcommand's own usage line must be there.
func kuraHas(bin, sub string) bool {
	if bin == "" {
		return false
	}
	out, err := exec.Command(bin, "help", sub).CombinedOutput()
	return err == nil && strings.Contains(string(out), "kura "+sub)
}

func runKura(ctx context.Context, cfg config, c *Corpus, p *proxy, regRoot string) *SystemResult {
	sys := &SystemResult{Name: "kura"}
	skip := func(why string) *SystemResult {
		log.Printf("kura: SKIPPED: %s", why)
		sys.Skipped, sys.SkipReason = true, why
		return sys
	}
	if cfg.kura == "" {
		return skip("no kura binary (run.sh builds ./cmd/kura; the build failed or -kura was not given)")
	}
	if !kuraHas(cfg.kura, "pull") {
		return skip(fmt.Sprintf("`%s help pull` does not know the command: kura pull is not implemented yet", cfg.kura))
	}
	store := filepath.Join(cfg.work, "kura-store")
	if err := removeTree(store); err != nil {
		return skip("cleaning the kura store: " + err.Error())
	}
	if err := os.MkdirAll(store, 0o700); err != nil {
		return skip(err.Error())
	}
	kura := func(label string, args ...string) error {
		cmd := exec.CommandContext(ctx, cfg.kura, args...)
		if b, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("kura %s: %w: %s", label, err, tail(string(b), 1000))
		}
		return nil
	}

	repo := appRepo
	if kuraHas(cfg.kura, kuraPushCmd) {
		pushes, err := kuraPushAll(ctx, cfg, c, p, regRoot, kura)
		if err != nil {
			sys.Notes = append(sys.Notes, err.Error()+"; pulling skopeo's images instead")
		} else {
			repo, sys.Push = kuraRepo, pushes
		}
	} else {
		sys.Notes = append(sys.Notes, "kura "+kuraPushCmd+" not implemented: kura pulls skopeo's old-format zstd:chunked images")
	}
	if repo == appRepo {
		sys.Notes = append(sys.Notes, "skopeo's images are in the old zstd:chunked format (no tar-split), which kura pulls whole")
	}

	sys.Repo = repo
	var refs []string
	for _, v := range c.Versions {
		ref := p.Addr + "/" + repo + ":" + v.Name
		refs = append(refs, ref)
		mark := p.Begin("kura pull " + v.Name)
		start := time.Now()
		err := kura("pull", kuraPullArgs(store, ref)...)
		reqs := p.Since(mark)
		r := PullResult{Version: v.Name, Seconds: time.Since(start).Seconds(), Traffic: sumTraffic(reqs), Requests: reqs}
		p.Begin("")
		if err != nil {
			r.Error = err.Error()
			sys.Pulls = append(sys.Pulls, r)
			sys.Notes = append(sys.Notes, "pull failed: "+err.Error())
			log.Printf("kura: %v", err)
			return sys
		}
		if r.Traffic.Received == 0 && len(sys.Pulls) == 0 {
			sys.Notes = append(sys.Notes, "kura pull "+v.Name+" exited 0 but fetched nothing through the proxy: check the hook's command line in kura.go")
		}
		r.DiskAfter, _ = duBytes(store)
		log.Printf("kura pull %s: %.1fs, requested %.2f MB, received %.2f MB, disk %.1f MB",
			v.Name, r.Seconds, mb(r.Traffic.Requested), mb(r.Traffic.Received), mb(r.DiskAfter))
		sys.Pulls = append(sys.Pulls, r)
	}

	switch {
	case kuraHas(cfg.kura, "mount"):
		sys.PageCache = kuraPageCache(cfg, c, store, refs, kura)
	case kuraHas(cfg.kura, "checkout"):
		sys.Notes = append(sys.Notes, "kura mount is not implemented yet: page cache measured on hardlinked checkouts (kura checkout --link hardlink)")
		sys.PageCache = kuraCheckoutPageCache(cfg, c, store, refs, kura)
	default:
		sys.Notes = append(sys.Notes, "page cache skipped: kura mount is not implemented yet")
		log.Printf("kura: page cache SKIPPED: kura mount is not implemented yet")
	}
	return sys
}

// kuraCheckoutPageCache checks every version out with hard links into the
// store and reads the same file set from each tree.
func kuraCheckoutPageCache(cfg config, c *Corpus, store string, refs []string, kura func(string, ...string) error) *PageCache {
	pc := &PageCache{Method: "kura checkout --link hardlink", Containers: len(refs)}
	start := time.Now()
	root := filepath.Join(cfg.work, "kura-checkout")
	_ = removeTree(root)
	defer removeTree(root)
	var trees []string
	for i, r := range refs {
		dir := filepath.Join(root, fmt.Sprintf("c%d", i))
		if err := kura("checkout", kuraCheckoutArgs(store, r, dir)...); err != nil {
			pc.Error = err.Error()
			return pc
		}
		trees = append(trees, dir)
	}
	kuraMeasure(cfg, c, pc, store, trees)
	pc.Seconds = time.Since(start).Seconds()
	return pc
}

// kuraPageCache mounts every version and reads the same file set from each.
func kuraPageCache(cfg config, c *Corpus, store string, refs []string, kura func(string, ...string) error) *PageCache {
	pc := &PageCache{Method: "kura mount", Containers: len(refs)}
	start := time.Now()
	mntRoot := filepath.Join(cfg.work, "kura-mnt")
	_ = removeTree(mntRoot)
	var mounts []string
	defer func() {
		hasUmount := kuraHas(cfg.kura, "umount")
		for _, m := range mounts {
			if hasUmount && kura("umount", kuraUmountArgs(store, m)...) == nil {
				continue
			}
			_ = exec.Command("umount", m).Run()
		}
		_ = removeTree(mntRoot)
	}()
	for i, r := range refs {
		m := filepath.Join(mntRoot, fmt.Sprintf("c%d", i))
		if err := os.MkdirAll(m, 0o755); err != nil {
			pc.Error = err.Error()
			return pc
		}
		if err := kura("mount", kuraMountArgs(store, r, m)...); err != nil {
			pc.Error = err.Error()
			return pc
		}
		mounts = append(mounts, m)
	}
	kuraMeasure(cfg, c, pc, store, mounts)
	pc.Seconds = time.Since(start).Seconds()
	return pc
}

// kuraMeasure reads the read sets from roots (one tree per version, last
// version last) and fills pc: ten readers and one reader of the -readset
// directories, then the same for the files common to all versions. The
// store's resident pages are split into objects, composefs images, other.
func kuraMeasure(cfg config, c *Corpus, pc *PageCache, store string, roots []string) {
	read := func(roots []string, fn func(root string) error) func() error {
		return func() error {
			for _, r := range roots {
				if err := fn(r); err != nil {
					return err
				}
			}
			return nil
		}
	}
	dirs := func(root string) error { return readTrees(root, cfg.readSet) }
	ten := measureResidency(len(roots), read(roots, dirs), store, kuraStorePart)
	pc.CachedDelta, pc.Resident, pc.ResidentBy = ten.CachedDelta, ten.Resident, ten.ResidentBy
	if ten.Error != "" {
		pc.Error = ten.Error
	}
	log.Printf("page cache %s: Cached +%.1f MB, store resident %.1f MB %v", pc.Method, mb(pc.CachedDelta), mb(pc.Resident), pc.ResidentBy)
	last := roots[len(roots)-1:]
	one := measureResidency(1, read(last, dirs), store, kuraStorePart)
	pc.One = &one
	if common := c.commonSet(); common != nil {
		files := func(root string) error { return readFiles(root, common.Files) }
		ten := measureResidency(len(roots), read(roots, files), store, kuraStorePart)
		one := measureResidency(1, read(last, files), store, kuraStorePart)
		pc.CommonTen, pc.CommonOne = &ten, &one
	}
	logResidency(pc)
}

// kuraStorePart names the part of the store a file belongs to (rel is its
// slash path in the store), for the page-cache breakdown.
func kuraStorePart(rel string) string {
	top, _, _ := strings.Cut(rel, "/")
	switch top {
	case "objects":
		return "objects"
	case "composefs":
		return "composefs images"
	case "variants":
		return "checkout variants"
	}
	return "other"
}

// cleanupStores removes what a run leaves in the work dir besides the caches
// (rootfs, corpus) that make the next run fast.
func cleanupStores(cfg config) {
	// The registry stays: its skopeo pushes are reused by the next run.
	for _, d := range []string{"kura-store", "kura-push-store", "kura-mnt", "kura-checkout", "cold"} {
		_ = removeTree(filepath.Join(cfg.work, d))
	}
}

// kuraPushAll sends every version's layout to kuraRepo with kura, two at a
// time, or reuses the pushes an earlier run made of the same corpus.
func kuraPushAll(ctx context.Context, cfg config, c *Corpus, p *proxy, regRoot string, kura func(string, ...string) error) ([]PushResult, error) {
	cachePath := filepath.Join(regRoot, "pushed-kura.json")
	if pc, err := loadPushCacheFile(cachePath, c); err == nil {
		log.Printf("kura: reusing its pushes from %s (same corpus)", pc.When.Format(time.RFC3339))
		if err := refreshLayerInfo(ctx, p.Addr, kuraRepo, pc.Push); err != nil {
			return nil, err
		}
		return pc.Push, nil
	}
	// Start from a repository the registry has never seen for kura.
	_ = os.Remove(cachePath)
	if err := os.RemoveAll(filepath.Join(regRoot, "data/docker/registry/v2/repositories", kuraRepo)); err != nil {
		return nil, err
	}
	start := time.Now()
	mark := p.Begin("kura push")
	out := make([]PushResult, len(c.Versions))
	errs := make([]error, len(c.Versions))
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i, v := range c.Versions {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			t := time.Now()
			ref := p.Addr + "/" + kuraRepo + ":" + v.Name
			if err := kura(kuraPushCmd, kuraPushArgs(filepath.Join(cfg.work, "kura-push-store"), v.Layout, v.Name, ref)...); err != nil {
				errs[i] = err
				return
			}
			r := PushResult{Version: v.Name, Tool: "kura " + kuraPushCmd, Seconds: time.Since(t).Seconds()}
			if err := inspectLayer(ctx, p.Addr, kuraRepo, v.Name, &r); err != nil {
				errs[i] = err
				return
			}
			log.Printf("kura push %s: %.1fs, layer %.1f MB", v.Name, r.Seconds, mb(r.CompressedSize))
			out[i] = r
		}()
	}
	wg.Wait()
	uploaded := sumTraffic(p.Since(mark)).Uploaded
	p.Begin("")
	_ = removeTree(filepath.Join(cfg.work, "kura-push-store"))
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	pc := pushCache{Stamp: c.Stamp, Layers: corpusLayers(c), When: start, Push: out,
		Seconds: time.Since(start).Seconds(), Uploaded: uploaded}
	if err := writePushCacheFile(cachePath, pc); err != nil {
		return nil, err
	}
	return out, nil
}
