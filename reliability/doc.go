// Package reliability holds Kura's hostile-input corpus and its crash and concurrency drills. It has
// no product code: the tests build hostile zstd:chunked layers by hand and pull them through a real
// in-process registry, and drive the kura binary as a subprocess, killing it at random points, racing
// pulls against gc and filling the disk. docs/reliability.md states the threat model and the results.
package reliability
