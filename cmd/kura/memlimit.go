package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// Go's default pacing lets the heap grow to twice what the last collection found live before
// collecting again. For an update pull, whose live heap is a few dozen megabytes of two
// versions' metadata and which allocates little else, that doubling is most of the process's
// peak RSS (89 MB where 27 MB is live). softHeapLimit keeps the heap within
// max(heapFloor, live×3/2) instead: a memory limit, raised after every collection that finds
// more live, so that a pull whose live heap grows is paced as with GOGC=50, never collected over
// and over against a fixed limit. kura pull sets it for updates only (pull.IsUpdate): a cold pull
// allocates gigabytes of buffers passing file contents through, and with this little headroom
// it collected 139 times instead of a dozen and took twice the time. An explicit GOMEMLIMIT or
// GOGC in the environment wins.

// heapFloor is the limit below which the heap is never pushed: under it, collecting more
// often saves no memory worth the CPU. 40 MiB since the stored tar-splits' small zstd window
// (store.NarrowMetadataFrame) took the update pull's live heap at its peak from ~36 to ~31 MB:
// on the bench's c4 → c5 update 13 collections instead of 11 at 44 MiB, where 36 MiB took 15–18
// and 32 MiB from 47 to several hundred.
const heapFloor = 40 << 20

// softHeapLimit sets the first limit and re-arms itself after each collection.
func softHeapLimit() {
	if os.Getenv("GOMEMLIMIT") != "" || os.Getenv("GOGC") != "" {
		return
	}
	heapLimitOn.Store(true)
	debug.SetMemoryLimit(heapFloor)
	armHeapLimit()
}

// heapLimitOn keeps the limit following the live heap; cleared, the next collection stops it
// (tests, which share the process).
var heapLimitOn atomic.Bool

// gcTick is allocated to be collected: its cleanup runs after the collection that freed it.
type gcTick struct{ _ [64]byte }

func armHeapLimit() {
	runtime.AddCleanup(new(gcTick), func(struct{}) {
		if heapLimitOn.Load() {
			adjustHeapLimit()
			armHeapLimit()
		}
	}, struct{}{})
}

// adjustHeapLimit sets the limit from the live heap the last collection measured.
func adjustHeapLimit() {
	s := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	metrics.Read(s)
	if s[0].Value.Kind() != metrics.KindUint64 {
		return
	}
	live := s[0].Value.Uint64()
	debug.SetMemoryLimit(int64(max(heapFloor, live+live/2)))
}
