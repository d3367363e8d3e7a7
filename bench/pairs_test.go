package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"testing"
)

func TestParseAccessLine(t *testing.T) {
	line := `127.0.0.1 - - [07/Dec/2026:01:42:46 +0000] "GET /v2/bench/kura/blobs/sha256:e9c3 HTTP/1.1" 206 557 "" "containers/5.23.1 (github.com/containers/image)"`
	r, ok := parseAccessLine(line)
	want := Request{Method: "GET", Path: "/v2/bench/kura/blobs/sha256:e9c3", Status: 206, Received: 557,
		UserAgent: "containers/5.23.1 (github.com/containers/image)"}
	if !ok || r != want {
		t.Errorf("parseAccessLine = %+v, %v; want %+v", r, ok, want)
	}
	if _, ok := parseAccessLine(`time="2026-12-07T01:42:43Z" level=warning msg="No HTTP secret provided"`); ok {
		t.Error("a registry message parsed as an access-log line")
	}
}

// TestAccessLogCountsWhatClientsReceive runs the real docker-registry and
// checks that the access log, read between markers, gives exactly the
// requests made and the bytes the client received, multipart ranges
// included: the timed pulls' byte counts rest on this.
func TestAccessLogCountsWhatClientsReceive(t *testing.T) {
	ctx := context.Background()
	reg, err := startRegistry(ctx, t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Stop()
	blob := make([]byte, 1<<20)
	rand.New(rand.NewSource(1)).Read(blob)
	digest := fmt.Sprintf("sha256:%x", sha256.Sum256(blob))
	pushBlob(t, reg.Addr, "t/app", digest, blob)
	alog := newAccessLog(reg.Log, reg.Addr)
	mark, err := alog.Mark(ctx)
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + reg.Addr + "/v2/t/app/blobs/" + digest
	var received int64
	for _, rng := range []string{"", "bytes=0-99", "bytes=0-99,5000-5999,9000-9000"} {
		req, _ := http.NewRequest(http.MethodGet, url, nil)
		if rng != "" {
			req.Header.Set("Range", rng)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		n, _ := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		received += n
	}
	reqs, err := alog.Since(ctx, mark)
	if err != nil {
		t.Fatal(err)
	}
	tr := sumTraffic(reqs)
	if tr.Requests != 3 || tr.Received != received || tr.BlobReceived != received {
		t.Errorf("access log: %d requests, %d bytes (blobs %d); the client made 3 and received %d", tr.Requests, tr.Received, tr.BlobReceived, received)
	}
	if received <= int64(len(blob))+1101 {
		t.Errorf("received %d bytes in all: the multipart answer should carry boundaries beyond the 1101 bytes asked for", received)
	}
	if again, err := alog.Since(ctx, mark+3); err != nil || len(again) != 0 {
		t.Errorf("after the three requests the log holds %d more (%v); want none (markers are left out)", len(again), err)
	}
}

// pushBlob uploads blob in one PUT, as the distribution API allows.
func pushBlob(t *testing.T, addr, repo, digest string, blob []byte) {
	t.Helper()
	resp, err := http.Post("http://"+addr+"/v2/"+repo+"/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	loc, err := resp.Location()
	if err != nil || resp.StatusCode != http.StatusAccepted {
		t.Fatalf("starting upload: %s, %v", resp.Status, err)
	}
	q := loc.Query()
	q.Set("digest", digest)
	loc.RawQuery = q.Encode()
	req, _ := http.NewRequest(http.MethodPut, loc.String(), bytes.NewReader(blob))
	req.Header.Set("Content-Type", "application/octet-stream")
	resp, err = http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("finishing upload: %s", resp.Status)
	}
}

func TestSpreadAndPairRatios(t *testing.T) {
	if s := spreadOf([]float64{3, 1, 2, 10}); s != (Spread{Median: 2.5, Min: 1, Max: 10, N: 4}) {
		t.Errorf("spreadOf = %+v", s)
	}
	pulls := []PairPull{
		{Tool: pairPodman, Version: "c1", Store: 1, Seconds: 2},
		{Tool: pairKura, Version: "c1", Store: 1, Seconds: 1},
		{Tool: pairPodman, Version: "c1", Store: 2, Seconds: 4},
		{Tool: pairKura, Version: "c1", Store: 2, Seconds: 1},
		{Tool: pairKura, Version: "c1", Store: 3, Seconds: 1}, // no podman pull to pair with
		{Tool: pairPodman, Version: "c2", Store: 1, Seconds: 1, Error: "x"},
		{Tool: pairKura, Version: "c2", Store: 1, Seconds: 1},
		{Tool: pairPodman, Version: "c0", Store: 1, Seconds: 1},
		{Tool: pairKura, Version: "c0", Store: 1, Seconds: 3},
	}
	updates := func(v string) bool { return v != "c0" }
	got := spreadOf(pairRatios(pulls, updates))
	if got != (Spread{Median: 0.375, Min: 0.25, Max: 0.5, N: 2}) {
		t.Errorf("update ratios %+v; want the two complete c1 pairs, 0.25 and 0.5", got)
	}
	if k := pairValues(pulls, pairKura, updates, func(p PairPull) float64 { return p.Seconds }); len(k) != 4 {
		t.Errorf("kura update pulls: %v, want 4 values", k)
	}
}

func TestPairOrderAlternates(t *testing.T) {
	for version := range 10 {
		first := map[int]int{}
		for round := 1; round <= 5; round++ {
			a, b := pairOrder(round, version, 0, 2), pairOrder(round, version, 1, 2)
			if a == b {
				t.Fatalf("round %d version %d: both slots give tool %d", round, version, a)
			}
			first[a]++
		}
		if first[0] < 2 || first[1] < 2 {
			t.Errorf("version %d: tool 0 first %d times, tool 1 %d times in 5 rounds; want each at least 2", version, first[0], first[1])
		}
	}
}
