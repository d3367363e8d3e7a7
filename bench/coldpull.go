package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"time"
)

// ColdPull is one pull of the first version into an empty store (or, for
// skopeo, an empty directory).
type ColdPull struct {
	Tool    string  `json:"tool"`
	Round   int     `json:"round"`
	Ref     string  `json:"ref"`
	Seconds float64 `json:"seconds"`
	Traffic Traffic `json:"traffic"`
	Error   string  `json:"error,omitempty"`
}

// The tools of the cold-pull comparison, as they appear in the report.
const (
	coldKura   = "kura pull"
	coldPodman = "podman pull"
	coldSkopeo = "skopeo copy to dir:"
)

// coldRounds is how many times each tool pulls; the order rotates each round
// so no tool always goes first (or always last) after the others.
const coldRounds = 3

// runColdPulls times kura pull, podman pull and skopeo copy docker:// → dir:
// of the first version, each into a new empty destination, coldRounds times,
// alternating, straight from the registry (bytes from its access log). All
// three fetch the same blob (kuraRef: kura's own push, whose old-format
// annotations podman 4.3 reads too), or skopeo's push when kura made none. skopeo copy to dir: fetches
// the blob whole and writes it as one file: the cost of moving the bytes,
// with no decompression or per-file work.
func runColdPulls(ctx context.Context, cfg config, c *Corpus, reg *registry, alog *accessLog, kuraRef string) []ColdPull {
	first := c.Versions[0].Name
	podmanRef := reg.Addr + "/" + appRepo + ":" + first
	if kuraRef != "" {
		podmanRef = kuraRef // the same blob for every tool
	}
	skopeoRef := podmanRef
	scratch := filepath.Join(cfg.work, "cold")
	type tool struct {
		name, ref string
		pull      func(dir string) error
	}
	tools := []tool{
		{coldPodman, podmanRef, func(dir string) error {
			e, err := newPodmanEnv(dir, false, reg.Addr)
			if err != nil {
				return err
			}
			cmd := e.command(ctx, "pull", "-q", "--tls-verify=false", podmanRef)
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("podman pull %s: %w: %s", podmanRef, err, tail(string(b), 500))
			}
			return nil
		}},
		{coldSkopeo, skopeoRef, func(dir string) error {
			cmd := exec.CommandContext(ctx, "skopeo", "copy", "--quiet", "--src-tls-verify=false",
				"docker://"+skopeoRef, "dir:"+filepath.Join(dir, "image"))
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("skopeo copy %s: %w: %s", skopeoRef, err, tail(string(b), 500))
			}
			return nil
		}},
	}
	if kuraRef != "" {
		tools = append(tools, tool{coldKura, kuraRef, func(dir string) error {
			store := filepath.Join(dir, "store")
			if err := os.MkdirAll(store, 0o700); err != nil {
				return err
			}
			cmd := exec.CommandContext(ctx, cfg.kura, kuraPullArgs(store, kuraRef)...)
			if b, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("kura pull %s: %w: %s", kuraRef, err, tail(string(b), 500))
			}
			return nil
		}})
	}
	var out []ColdPull
	for round := range coldRounds {
		for k := range tools {
			t := tools[(k+round)%len(tools)]
			if ctx.Err() != nil {
				return out
			}
			r := ColdPull{Tool: t.name, Round: round + 1, Ref: t.ref}
			r.Seconds, r.Traffic, r.Error = coldPullOnce(ctx, alog, filepath.Join(scratch, "dest"), t.pull)
			log.Printf("cold pull round %d, %s: %.2fs, received %.2f MB %s", r.Round, t.name, r.Seconds, mb(r.Traffic.Received), r.Error)
			out = append(out, r)
		}
	}
	_ = removeTree(scratch)
	_ = removeTree(podmanRunroot(filepath.Join(scratch, "dest")))
	return out
}

// coldMedian is the median time of a tool's successful cold pulls, and how
// many there were.
func coldMedian(pulls []ColdPull, tool string) (float64, int) {
	var s []float64
	for _, p := range pulls {
		if p.Tool == tool && p.Error == "" {
			s = append(s, p.Seconds)
		}
	}
	if len(s) == 0 {
		return 0, 0
	}
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2], len(s)
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2, len(s)
}

// coldPullOnce empties dir, writes out dirty pages (untimed, see timedPull)
// and times pull(dir), with its requests from the registry's access log.
func coldPullOnce(ctx context.Context, alog *accessLog, dir string, pull func(string) error) (float64, Traffic, string) {
	if err := removeTree(dir); err != nil {
		return 0, Traffic{}, err.Error()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return 0, Traffic{}, err.Error()
	}
	if err := exec.CommandContext(ctx, "sync").Run(); err != nil {
		return 0, Traffic{}, "sync: " + err.Error()
	}
	mark, err := alog.Mark(ctx)
	if err != nil {
		return 0, Traffic{}, err.Error()
	}
	start := time.Now()
	err = pull(dir)
	secs := time.Since(start).Seconds()
	reqs, lerr := alog.Since(ctx, mark)
	if err == nil {
		err = lerr
	}
	if err != nil {
		return secs, sumTraffic(reqs), err.Error()
	}
	return secs, sumTraffic(reqs), ""
}
