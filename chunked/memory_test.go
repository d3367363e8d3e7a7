package chunked

import (
	"archive/tar"
	"io"
	"math/rand/v2"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/kura-oci/kura/internal/testkit"
)

// The writer streams: converting a large layer needs memory independent of its size.
func TestConvertMemoryBounded(t *testing.T) {
	if testing.Short() {
		testkit.Skip(t, "-short: converts 512 MiB")
	}
	const total = 512 << 20
	pr, pw := io.Pipe()
	go func() {
		rng := rand.NewChaCha8([32]byte{1})
		tw := tar.NewWriter(pw)
		buf := make([]byte, 1<<20)
		for i := 0; i < total/(32<<20); i++ {
			if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: "f" + string(rune('a'+i)), Size: 32 << 20, Mode: 0o644}); err != nil {
				pw.CloseWithError(err)
				return
			}
			for n := 0; n < 32<<20; n += len(buf) {
				rng.Read(buf)
				if i%2 == 1 {
					for j := range buf[:len(buf)/2] {
						buf[j] = 'a' + buf[j]%4 // compressible half
					}
				}
				if _, err := tw.Write(buf); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
		}
		pw.CloseWithError(tw.Close())
	}()

	// Pools hold encoders of earlier tests until two collections drop them.
	runtime.GC()
	runtime.GC()
	var base runtime.MemStats
	runtime.ReadMemStats(&base)
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		var ms runtime.MemStats
		for {
			runtime.ReadMemStats(&ms)
			if ms.HeapInuse > peak.Load() {
				peak.Store(ms.HeapInuse)
			}
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
		}
	}()
	desc, err := Convert(t.Context(), pr, io.Discard, WithLevel(1))
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	grown := peak.Load() - min(peak.Load(), base.HeapInuse)
	t.Logf("converted %d bytes into %d, heap grew by at most %d MiB", total, desc.Size, grown>>20)
	if grown > 160<<20 {
		t.Fatalf("heap grew by %d MiB for a %d MiB layer: not streaming", grown>>20, total>>20)
	}
}
