package layer_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	kuratestdata "github.com/kura-oci/kura/internal/testdata"
	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/store"
	"github.com/kura-oci/kura/store/layer"
)

// TestImportThroughput compares importing a real root filesystem tar into a fresh store (with
// fsync, as in production) against what any tool must do at least: `tar -x` plus `sha256sum` of
// every file, in the same run. KURA_BENCH_TAR names the tar (e.g. made with
// `tar -cf go.tar -C / usr/local/go`); without it the small real source tree of the
// zstd:chunked vectors is imported, which checks the path but says little about throughput.
func TestImportThroughput(t *testing.T) {
	tarPath := os.Getenv("KURA_BENCH_TAR")
	if tarPath == "" {
		tarPath = kuratestdata.Dir(t, "zstd-chunked", "real.tar")
	}
	fi, err := os.Stat(tarPath)
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	// Warm the page cache so both sides read the tar from memory.
	exec.Command("cat", tarPath).Run()

	base := func() time.Duration {
		dir := filepath.Join(work, "x")
		os.MkdirAll(dir, 0o755)
		start := time.Now()
		cmd := exec.Command("sh", "-c", `tar -xf "$1" -C "$2" && find "$2" -type f -print0 | xargs -0 sha256sum >/dev/null && sync -f "$2"`, "sh", tarPath, dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%v %s", err, out)
		}
		d := time.Since(start)
		os.RemoveAll(dir)
		return d
	}
	kura := func(opts ...store.Option) time.Duration {
		root := filepath.Join(work, "store")
		s := teststore.Open(t, teststore.At(root), teststore.Synced(), teststore.With(opts...))
		unlock, _ := s.RLock(context.Background())
		defer unlock()
		f, err := os.Open(tarPath)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		start := time.Now()
		if _, err := layer.Import(context.Background(), s, f, layer.Options{}); err != nil {
			t.Fatal(err)
		}
		d := time.Since(start)
		os.RemoveAll(root)
		return d
	}
	mb := float64(fi.Size()) / (1 << 20)
	// Interleave runs so that machine load hits both sides alike; report the best of each.
	var bb, bk, bn time.Duration
	for range 2 {
		b, k, n := base(), kura(), kura(store.WithoutSync())
		if bb == 0 || b < bb {
			bb = b
		}
		if bk == 0 || k < bk {
			bk = k
		}
		if bn == 0 || n < bn {
			bn = n
		}
	}
	t.Logf("%.0f MiB tar: tar -x + sha256sum + sync %v (%.0f MiB/s); kura import %v (%.0f MiB/s, ratio %.2f); without fsync %v (ratio %.2f)",
		mb, bb, mb/bb.Seconds(), bk, mb/bk.Seconds(), bk.Seconds()/bb.Seconds(), bn, bn.Seconds()/bb.Seconds())
}
