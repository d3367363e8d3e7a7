package main

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/layerstore"
)

// TestPendingReleases: a completed pull's pending layer directory outlives the completion by
// the grace (a diff resolution answered just before is still walked after it), and goes at once
// when the server stops: the releases in their grace are made when its context ends, before
// wait returns, and a release asked after wait is made at once.
func TestPendingReleases(t *testing.T) {
	state := t.TempDir()
	ls, err := layerstore.New(teststore.Open(t), nil, layerstore.Options{State: state, Diff: layerstore.DiffCheckout})
	if err != nil {
		t.Fatal(err)
	}
	a, b := digest.FromString("a"), digest.FromString("b")
	dir := func(d digest.Digest) string { return filepath.Join(state, "pending", d.Encoded()) }
	for _, d := range []digest.Digest{a, b} {
		if err := os.MkdirAll(dir(d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	exists := func(d digest.Digest) bool { _, err := os.Stat(dir(d)); return err == nil }

	ctx, cancel := context.WithCancel(context.Background())
	r := &pendingReleases{ls: ls, grace: time.Hour}
	r.release(ctx, []digest.Digest{a})
	if !exists(a) {
		t.Fatal("the pending layer's directory went at the completion, before the grace")
	}
	cancel() // the server stops
	r.wait()
	if exists(a) {
		t.Fatal("the pending layer's directory is still there once the server stopped")
	}
	r.release(context.Background(), []digest.Digest{b}) // a pull completing as the server stops
	if exists(b) {
		t.Fatal("a release asked after wait was not made at once")
	}
}
