package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestALSStepCountBytes: the registry's bytes of a step are split by User-Agent; podman's
// layer blob GETs are counted, its config GET (a small blob) and manifest GETs are not.
func TestALSStepCountBytes(t *testing.T) {
	var s ALSStep
	s.countBytes([]Request{
		{Method: "GET", Path: "/v2/r/manifests/c1", Received: 900, UserAgent: "containers/5.23.1 (github.com/containers/image)"},
		{Method: "GET", Path: "/v2/r/blobs/sha256:cfg", Received: 380, UserAgent: "containers/5.23.1 (github.com/containers/image)"},
		{Method: "GET", Path: "/v2/r/manifests/c1", Received: 900, UserAgent: "kura/dev"},
		{Method: "GET", Path: "/v2/r/blobs/sha256:layer", Received: 5 << 20, UserAgent: "kura/dev"},
	})
	if s.Bytes != 900+380+900+5<<20 || s.ByPodman != 1280 || s.PodmanBlobGets != 0 {
		t.Errorf("through the layer store: %+v; want all bytes counted, 1280 by podman, no layer blob GET", s)
	}
	var p ALSStep
	p.countBytes([]Request{{Method: "GET", Path: "/v2/r/blobs/sha256:layer", Received: 4 << 20, UserAgent: "containers/5.23.1"}})
	if p.PodmanBlobGets != 1 || p.PodmanBlobSize != 4<<20 || p.ByPodman != 4<<20 {
		t.Errorf("podman alone: %+v; want one layer blob GET of 4 MiB", p)
	}
}

// TestALSRatios: Kura's figure is divided by the other set-up's of the same round and version;
// failed steps and steps without a partner are left out.
func TestALSRatios(t *testing.T) {
	steps := []ALSStep{
		{Tool: alsKura, Version: "c1", Round: 1, Running: 2},
		{Tool: alsPodmanHL, Version: "c1", Round: 1, Running: 4},
		{Tool: alsKura, Version: "c1", Round: 2, Running: 3},
		{Tool: alsPodmanHL, Version: "c1", Round: 2, Running: 1, Error: "failed"},
		{Tool: alsKura, Version: "c2", Round: 1, Running: 3},
		{Tool: alsPodmanHL, Version: "c2", Round: 1, Running: 2},
		{Tool: alsPodman, Version: "c2", Round: 1, Running: 30},
	}
	all := func(string) bool { return true }
	got := alsRatios(steps, alsPodmanHL, all, func(s ALSStep) float64 { return s.Running })
	if want := []float64{0.5, 1.5}; !slices.Equal(got, want) {
		t.Errorf("ratios %v; want %v", got, want)
	}
}

// TestALSCgroupStat: memory.stat files are read as "key value" lines (v1's total_cache, v2's
// file and kernel); an empty or missing file is an error, not zeros.
func TestALSCgroupStat(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "memory.stat")
	if err := os.WriteFile(p, []byte("cache 4096\ntotal_cache 311779328\nfile 8192\nkernel 12288\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, err := readKeyed(p)
	if err != nil || st["total_cache"] != 311779328 || st["file"] != 8192 || st["kernel"] != 12288 {
		t.Errorf("readKeyed: %v, %v", st, err)
	}
	if err := os.WriteFile(p, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readKeyed(p); err == nil {
		t.Error("readKeyed of an empty file: no error")
	}
	if _, err := readCgroupMem("/kura-bench-no-such-cgroup"); err == nil {
		t.Error("readCgroupMem of a missing cgroup: no error")
	}
}

// TestALSPageCacheTable: every measure appears with its pass and order, an error in its row.
func TestALSPageCacheTable(t *testing.T) {
	var b strings.Builder
	w := func(f string, a ...any) { fmt.Fprintf(&b, f, a...) }
	alsPageCacheTable(w, []ALSPageCache{
		{Tool: alsKura, Pass: 1, Charged: 297 << 20, Kernel: 233 << 20, Resident: 249 << 20,
			ResidentBy: map[string]int64{"Kura store": 231 << 20, "composefs images": 18 << 20}},
		{Tool: alsPodmanHL, Pass: 2, Order: 1, Error: "boom"},
	})
	out := b.String()
	for _, want := range []string{"| 1 | podman + Kura layer store (1) | 311.43 | 244.32 | 555.75 |", "composefs images 18.87", "| 2 | podman use_hard_links=true (2) | error: boom"} {
		if !strings.Contains(out, want) {
			t.Errorf("table lacks %q:\n%s", want, out)
		}
	}
}
