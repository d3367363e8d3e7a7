package main

import (
	"archive/tar"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCtdRatiosPairByRoundAndVersion(t *testing.T) {
	starts := []CtdStart{
		{Setup: ctdOverlay, Version: "c1", Round: 1, Seconds: 4},
		{Setup: ctdKura, Version: "c1", Round: 1, Seconds: 1},
		{Setup: ctdOverlay, Version: "c1", Round: 2, Seconds: 8},
		{Setup: ctdKura, Version: "c1", Round: 2, Seconds: 2, Error: "failed"}, // no pair
		{Setup: ctdKura, Version: "c2", Round: 1, Seconds: 3},                  // no overlayfs start
	}
	got := ctdRatios(starts, func(CtdStart) bool { return true }, startSecs, ctdOverlay, ctdKura)
	if len(got) != 1 || got[0] != 0.25 {
		t.Fatalf("ratios %v, want [0.25]", got)
	}
	if v := ctdValues(starts, func(s CtdStart) bool { return s.Setup == ctdKura }, startSecs); len(v) != 2 {
		t.Fatalf("kura values %v, want the two successful starts", v)
	}
}

func TestAgentName(t *testing.T) {
	for ua, want := range map[string]string{
		"containerd/1.6.20~ds1":               "containerd",
		"kura go-containerregistry/v0.22 foo": "kura",
		"":                                    "?",
	} {
		if got := agentName(ua); got != want {
			t.Errorf("agentName(%q) = %q, want %q", ua, got, want)
		}
	}
}

// The two configurations differ only where they must: the kura one names the proxy plugin,
// uses it in the CRI plugin and passes the snapshot labels; both restrict oom_score_adj and
// keep runc's state private.
func TestCtdConfig(t *testing.T) {
	kura := (&ctdSetup{name: ctdKura, base: "/b", run: "/r", sock: "/r/c.sock"}).ctdConfig("127.0.0.1:5000", "127.0.0.1:5000/bench/pause:1")
	ovl := (&ctdSetup{name: ctdOverlay, base: "/b", run: "/r", sock: "/r/c.sock"}).ctdConfig("127.0.0.1:5000", "127.0.0.1:5000/bench/pause:1")
	for _, want := range []string{`[proxy_plugins.kura]`, `address = "/r/kura.sock"`, `snapshotter = "kura"`, `disable_snapshot_annotations = false`} {
		if !strings.Contains(kura, want) {
			t.Errorf("kura config lacks %s:\n%s", want, kura)
		}
		if strings.Contains(ovl, want) {
			t.Errorf("overlayfs config has %s:\n%s", want, ovl)
		}
	}
	for _, c := range []string{kura, ovl} {
		for _, want := range []string{`restrict_oom_score_adj = true`, `Root = "/r/runc"`, `sandbox_image = "127.0.0.1:5000/bench/pause:1"`, `endpoint = ["http://127.0.0.1:5000"]`} {
			if !strings.Contains(c, want) {
				t.Errorf("config lacks %s:\n%s", want, c)
			}
		}
	}
	stargz := (&ctdSetup{name: ctdStargz, base: "/b", run: "/r", sock: "/r/c.sock"}).ctdConfig("127.0.0.1:5000", "127.0.0.1:5000/bench/pause:1")
	lazy := (&ctdSetup{name: ctdKuraLazy, base: "/b", run: "/r", sock: "/r/c.sock"}).ctdConfig("127.0.0.1:5000", "127.0.0.1:5000/bench/pause:1")
	for _, want := range []string{`[proxy_plugins.stargz]`, `address = "/r/stargz.sock"`, `snapshotter = "stargz"`, `disable_snapshot_annotations = false`} {
		if !strings.Contains(stargz, want) {
			t.Errorf("stargz config lacks %s:\n%s", want, stargz)
		}
	}
	if lazy != kura {
		t.Errorf("kura-lazy config differs from kura's (only the snapshotter's flag should):\n%s", lazy)
	}
	if !strings.Contains(ovl, `snapshotter = "overlayfs"`) {
		t.Errorf("overlayfs config does not use overlayfs:\n%s", ovl)
	}
}

// The pause layer holds sleep(1), the libraries ldd names (the loader included) and their
// parent directories, each before what it contains.
func TestPauseLayer(t *testing.T) {
	files, err := hostBinaryFiles(pauseCmd[0])
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := tarFiles(&buf, files); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	tr := tar.NewReader(&buf)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if dir := filepath.Dir(strings.TrimSuffix(h.Name, "/")); dir != "." && !seen[dir+"/"] {
			t.Errorf("%s comes before its directory", h.Name)
		}
		seen[h.Name] = true
	}
	if !seen["usr/bin/sleep"] || len(files) < 3 {
		t.Fatalf("layer %v from %v: want sleep, libc and the loader", seen, files)
	}
	for _, f := range files {
		if !seen[f[1:]] {
			t.Errorf("layer lacks %s", f)
		}
	}
}

func TestDuOnceCountsHardLinksOnce(t *testing.T) {
	a, b := t.TempDir(), t.TempDir()
	if err := os.WriteFile(filepath.Join(a, "f"), make([]byte, 1<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(a, "f"), filepath.Join(b, "f")); err != nil {
		t.Fatal(err)
	}
	na, err := duTotal([]string{a})
	if err != nil {
		t.Fatal(err)
	}
	both, err := duTotal([]string{a, b})
	if err != nil {
		t.Fatal(err)
	}
	if na < 1<<20 || both >= na+1<<20 {
		t.Fatalf("du of a: %d, of a and b (b a hard link of a's file): %d; want the file counted once", na, both)
	}
}

// A start's bytes are its own clients': another set-up's background fetch
// logged in the same span is not counted.
func TestRecvCountsOwnAgents(t *testing.T) {
	by := map[string]int64{"containerd": 1, "kura": 10, "Go-http-client": 100}
	for setup, want := range map[string]float64{ctdOverlay: 1, ctdKura: 11, ctdKuraLazy: 11, ctdStargz: 101} {
		if got := recv(CtdStart{Setup: setup, ByAgent: by}); got != want {
			t.Errorf("recv(%s) = %v, want %v", setup, got, want)
		}
	}
}
