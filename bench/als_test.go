package main

import (
	"slices"
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
