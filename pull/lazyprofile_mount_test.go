package pull

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// The files read on demand during the first start are saved as the repository's profile, in
// order; a lazy pull of an update of the image fetches the profiled files (matched by path)
// before it says the image is mountable, so with the bulk fetch held they are stored already.
func TestLazyProfileRecordedAndReused(t *testing.T) {
	e, p := newLazyEnv(t)
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	read := []string{"usr/lib/big.so", "usr/lib/small-07"}
	for _, name := range read {
		e.readWhole(t, name, "through the mount")
	}
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	repo := profileRepo(p.Source, p.Name)
	if got := loadProfile(e.s, repo, slog.New(slog.DiscardHandler)); fmt.Sprint(got) != fmt.Sprint(read) {
		t.Fatalf("profile of %s: %q, want the files read in order %q", repo, got, read)
	}

	v1 := buildImage(t, tarOf(t, genTree(1)))
	v1.push(t, e.reg, "app", "v1")
	r, err := imageref.Parse("docker://" + e.reg.Host + "/app:v1")
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSource(registryClient(registry.WithTLSVerify(false)), r)
	p1, err := PullLazy(context.Background(), e.s, src)
	if err != nil {
		t.Fatal(err)
	}
	big := fileDigest(t, genTree(1), "usr/lib/big.so")
	if e.s.HasObject(big) {
		t.Fatal("v1's big.so is stored before the fill service ran: the test shows nothing")
	}
	hold1 := make(chan struct{})
	ready, done1 := make(chan struct{}), make(chan error, 1)
	go func() {
		done1 <- ServeLazy(context.Background(), e.s, src, p1, func() { close(ready) }, WithBackgroundHeld(hold1))
	}()
	select {
	case <-ready:
	case err := <-done1:
		t.Fatalf("ServeLazy ended before it was ready: %v", err)
	}
	if !e.s.HasObject(big) {
		t.Fatal("the profiled file usr/lib/big.so of the update was not fetched before the image was mountable")
	}
	if e.s.HasObject(fileDigest(t, genTree(1), "usr/lib/new-in-v1")) {
		t.Fatal("a file the profile does not name was fetched before the bulk fetch began")
	}
	close(hold1)
	if err := <-done1; err != nil {
		t.Fatal(err)
	}
	checkFsck(t, e.s)
}

// A garbage profile is ignored with a warning: the pull serves and completes as without one,
// and the start-up then replaces it with the files actually read.
func TestLazyGarbageProfileIgnored(t *testing.T) {
	e, p := newLazyEnv(t)
	repo := profileRepo(p.Source, p.Name)
	if err := saveProfile(e.s, repo, nil); err != nil { // makes the directory
		t.Fatal(err)
	}
	if err := os.WriteFile(profilePath(e.s, repo), []byte(`{"version":1,"repository":"`+repo+`","paths":["../x"]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	var logBuf bytes.Buffer
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold), WithLogger(slog.New(slog.NewTextHandler(&logBuf, nil))))
	e.readWhole(t, "usr/lib/blob.bin", "through the mount")
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(logBuf.String(), "start-up profile ignored") {
		t.Fatalf("no warning for the garbage profile: %q", logBuf.String())
	}
	e.checkComplete(t, p)
	if got := loadProfile(e.s, repo, slog.New(slog.DiscardHandler)); fmt.Sprint(got) != "[usr/lib/blob.bin]" {
		t.Fatalf("profile after the start-up: %q, want [usr/lib/blob.bin]", got)
	}
}

func fileDigest(t *testing.T, tree []treeFile, name string) digest.Digest {
	t.Helper()
	for _, f := range tree {
		if f.name == name {
			return digest.FromBytes(f.content)
		}
	}
	t.Fatalf("no %s in the tree", name)
	return ""
}

// A lazy pull fetches no byte of the tar-split before the image is mountable: only the
// completing import needs it (and fetches it here, with no stored predecessor to predict from).
func TestLazyTarSplitDeferred(t *testing.T) {
	e, p := newLazyEnv(t)
	loc, err := chunked.LocateFromAnnotations(e.img.descs[0].Annotations, e.img.descs[0].Size)
	if err != nil {
		t.Fatal(err)
	}
	ts := loc.TarSplit
	layerDigest := e.img.descs[0].Digest
	if n := tarSplitRequests(t, e.reg.Proxy.BlobRequests(), layerDigest, ts.Offset, ts.Offset+ts.Length); n != 0 {
		t.Fatalf("%d blob requests before mounting covered the tar-split", n)
	}
	hold := make(chan struct{})
	done := e.serve(t, context.Background(), p, WithBackgroundHeld(hold))
	close(hold)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
	if n := tarSplitRequests(t, e.reg.Proxy.BlobRequests(), layerDigest, ts.Offset, ts.Offset+ts.Length); n == 0 {
		t.Fatal("the layer completed without fetching its tar-split: the test shows nothing")
	}
}

// tarSplitRequests counts the GETs of blob d whose Range (or lack of one) covers a byte of
// [from, to).
func tarSplitRequests(t *testing.T, reqs []registrytest.BlobRequest, d digest.Digest, from, to int64) int {
	t.Helper()
	n := 0
	for _, r := range reqs {
		if r.Digest != d {
			continue
		}
		spec, ok := strings.CutPrefix(r.Range, "bytes=")
		if !ok {
			n++ // the whole blob
			continue
		}
		for _, part := range strings.Split(spec, ",") {
			var a, b int64
			if _, err := fmt.Sscanf(strings.TrimSpace(part), "%d-%d", &a, &b); err != nil {
				t.Fatalf("range %q: %v", r.Range, err)
			}
			if a < to && b >= from {
				n++
				break
			}
		}
	}
	return n
}
