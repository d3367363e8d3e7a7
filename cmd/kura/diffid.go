package main

import (
	"fmt"
	"io"
	"sync"

	"github.com/opencontainers/go-digest"
)

// allowDiffIDMismatchUsage is the help of pull's and copy's --allow-diffid-mismatch.
const allowDiffIDMismatchUsage = "accept a layer whose tar does not hash to its config's DiffID: record it under its true DiffID, warn on stderr"

// diffIDWarner returns what pull and copy call for each layer --allow-diffid-mismatch let
// through: a loud line on w naming the layer and both DiffIDs. Layers run at once: lines must
// not interleave.
func diffIDWarner(w io.Writer, what string) func(layer, trueDiffID, configDiffID digest.Digest) {
	var mu sync.Mutex
	return func(layer, trueDiffID, configDiffID digest.Digest) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(w, "kura: WARNING: layer %s decompresses to a tar with DiffID %s, but the image config lists %s;"+
			" --allow-diffid-mismatch: %s\n", layer, trueDiffID, configDiffID, what)
	}
}
