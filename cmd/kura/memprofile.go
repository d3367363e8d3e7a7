package main

import (
	"bytes"
	"os"
	"runtime/metrics"
	"runtime/pprof"
	"time"
)

// peakHeapProfile watches the live heap (as the last garbage collection measured it) and keeps
// the heap profile of its highest point: what a command's peak RSS is made of, which a profile
// taken at exit (--alloc-profile) no longer shows. The returned function stops watching and
// writes the profile to path.
func peakHeapProfile(path string) func() {
	stop, done := make(chan struct{}), make(chan struct{})
	var best bytes.Buffer
	go func() {
		defer close(done)
		sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
		var peak uint64
		tick := time.NewTicker(time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			metrics.Read(sample)
			if live := sample[0].Value.Uint64(); live > peak {
				peak = live
				best.Reset()
				pprof.Lookup("heap").WriteTo(&best, 0)
			}
		}
	}()
	return func() {
		close(stop)
		<-done
		os.WriteFile(path, best.Bytes(), 0o644)
	}
}
