package main

import (
	"math"
	"runtime/debug"
	"testing"
)

// softHeapLimit sets at least the floor, and nothing when the environment tunes the collector.
func TestSoftHeapLimit(t *testing.T) {
	defer func() { heapLimitOn.Store(false); debug.SetMemoryLimit(math.MaxInt64) }()
	t.Setenv("GOMEMLIMIT", "")
	t.Setenv("GOGC", "")
	debug.SetMemoryLimit(math.MaxInt64)
	softHeapLimit()
	if got := debug.SetMemoryLimit(-1); got < heapFloor || got == math.MaxInt64 {
		t.Errorf("limit %d, want at least %d", got, heapFloor)
	}
	adjustHeapLimit()
	if got := debug.SetMemoryLimit(-1); got < heapFloor {
		t.Errorf("limit %d after a collection, want at least %d", got, heapFloor)
	}
	heapLimitOn.Store(false)
	debug.SetMemoryLimit(math.MaxInt64)
	t.Setenv("GOGC", "100")
	softHeapLimit()
	if got := debug.SetMemoryLimit(-1); got != math.MaxInt64 {
		t.Errorf("GOGC set: limit %d, want none", got)
	}
}
