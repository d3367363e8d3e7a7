package pull

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/kura-oci/kura/internal/testkit/teststore"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/registry/registrytest"
)

// safetyNet bounds a test that would hang without idle timeouts: such a pull ends with the
// context's error, which the assertions refuse. It is no synchronisation: passing runs end by
// the idle timeout, far sooner.
const safetyNet = 60 * time.Second

// A registry that stalls every answer for a layer blob after its headers (the pull holds the
// store lock by then): with a short idle timeout each attempt is aborted, the retries run out,
// and the pull fails with ErrIdle, releasing the store lock so gc can take it.
func TestPullStalledRegistryTimesOut(t *testing.T) {
	reg := registrytest.New(t)
	img := buildImage(t, tarOf(t, genTree(0)))
	img.push(t, reg, "app", "v0")
	s := teststore.Open(t)
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.Stall, Digest: img.descs[0].Digest})
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()
	client := registryClient(registry.WithTLSVerify(false), registry.WithIdleTimeout(200*time.Millisecond), registry.WithRetry(2, time.Millisecond))
	_, err := pullWith(t, ctx, s, "docker://"+reg.Host+"/app:v0", client)
	if !errors.Is(err, registry.ErrIdle) || ctx.Err() != nil {
		t.Fatalf("pull from a stalled registry: %v (context: %v), want ErrIdle", err, ctx.Err())
	}
	stalled := 0
	for _, r := range reg.Proxy.BlobRequests() {
		if r.Faulted {
			stalled++
		}
	}
	if stalled < 2 {
		t.Fatalf("the proxy stalled %d requests, want every attempt (2)", stalled)
	}
	if _, err := s.GC(ctx); err != nil || ctx.Err() != nil {
		t.Fatalf("gc after the failed pull: %v (context: %v)", err, ctx.Err())
	}
	if ids, _ := s.Images(context.Background()); len(ids) != 0 {
		t.Fatalf("an image was recorded: %v", ids)
	}
}

// A registry that trickles its first blob answer (a byte every 20 ms, far below 1 KiB per idle
// timeout): that connection is aborted and the pull recovers on the next request.
func TestPullTricklingRegistryRecovers(t *testing.T) {
	reg := registrytest.New(t)
	img := buildImage(t, tarOf(t, genTree(0)))
	img.push(t, reg, "app", "v0")
	s := teststore.Open(t)
	reg.Proxy.SetFault(registrytest.Fault{Kind: registrytest.Trickle, Interval: 20 * time.Millisecond, Times: 1, Digest: img.descs[0].Digest})
	ctx, cancel := context.WithTimeout(context.Background(), safetyNet)
	defer cancel()
	client := registryClient(registry.WithTLSVerify(false), registry.WithIdleTimeout(300*time.Millisecond))
	if _, err := pullWith(t, ctx, s, "docker://"+reg.Host+"/app:v0", client); err != nil {
		t.Fatalf("pull after a trickling answer: %v", err)
	}
	var layerReqs []registrytest.BlobRequest
	for _, r := range reg.Proxy.BlobRequests() {
		if r.Digest == img.descs[0].Digest {
			layerReqs = append(layerReqs, r)
		}
	}
	if len(layerReqs) < 2 || !layerReqs[0].Faulted || layerReqs[0].BytesServed >= 1024 {
		t.Fatalf("want a trickled first answer, aborted, then more requests: %+v", layerReqs)
	}
	if got := exportDigest(t, s, img.diffIDs[0]); got != img.diffIDs[0] {
		t.Fatalf("exported %s, want %s", got, img.diffIDs[0])
	}
	checkFsck(t, s)
}
