package pull

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math/rand"
	"net/http"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kura-oci/kura/chunked"
	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
	"github.com/kura-oci/kura/source"
)

// serialLink is a client's base transport that models one network link shared by every blob
// GET with a Range: it answers them one at a time, whole, in the order they arrived, and only
// once it is opened. It numbers the arrivals and logs the order they were served in.
type serialLink struct {
	inner   http.RoundTripper
	arrived chan linkArrival // every arrival, in order

	mu       sync.Mutex
	queue    []*linkTurn
	open     bool
	busy     bool
	seq      int
	arrivals []linkArrival
	served   []linkArrival
}

type linkArrival struct {
	seq    int
	rng    string
	served []int // the requests served (in order) when this one arrived
	bytes  int64 // body bytes, once served
}

type linkTurn struct {
	linkArrival
	go_ chan struct{}
}

func newSerialLink() *serialLink {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	return &serialLink{inner: t, arrived: make(chan linkArrival, 1024)}
}

func (l *serialLink) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Method != http.MethodGet || req.Header.Get("Range") == "" {
		return l.inner.RoundTrip(req)
	}
	l.mu.Lock()
	l.seq++
	var served []int
	for _, a := range l.served {
		served = append(served, a.seq)
	}
	turn := &linkTurn{linkArrival: linkArrival{seq: l.seq, rng: req.Header.Get("Range"), served: served}, go_: make(chan struct{})}
	l.queue = append(l.queue, turn)
	l.arrivals = append(l.arrivals, turn.linkArrival)
	l.arrived <- turn.linkArrival
	l.dispatch()
	l.mu.Unlock()
	select {
	case <-turn.go_:
	case <-req.Context().Done():
		l.mu.Lock()
		if i := indexTurn(l.queue, turn); i >= 0 { // not served yet: leave the queue
			l.queue = append(l.queue[:i], l.queue[i+1:]...)
			l.mu.Unlock()
			return nil, req.Context().Err()
		}
		l.mu.Unlock()
		<-turn.go_
	}
	resp, err := l.inner.RoundTrip(req)
	if err != nil {
		l.release(turn)
		return nil, err
	}
	resp.Body = &linkBody{ReadCloser: resp.Body, l: l, turn: turn}
	return resp, nil
}

func indexTurn(q []*linkTurn, t *linkTurn) int {
	for i, x := range q {
		if x == t {
			return i
		}
	}
	return -1
}

// dispatch lets the first request in the queue go when the link is open and free; l.mu is held.
func (l *serialLink) dispatch() {
	if !l.open || l.busy || len(l.queue) == 0 {
		return
	}
	l.busy = true
	next := l.queue[0]
	l.queue = l.queue[1:]
	close(next.go_)
}

func (l *serialLink) release(t *linkTurn) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.served = append(l.served, t.linkArrival)
	l.busy = false
	l.dispatch()
}

func (l *serialLink) openLink() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open = true
	l.dispatch()
}

// logs returns the arrivals and the served requests, each in order.
func (l *serialLink) logs() (arrivals, served []linkArrival) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]linkArrival(nil), l.arrivals...), append([]linkArrival(nil), l.served...)
}

// linkBody frees the link at the body's end or close, whichever comes first.
type linkBody struct {
	io.ReadCloser
	l    *serialLink
	turn *linkTurn
	once sync.Once
}

func (b *linkBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.turn.bytes += int64(n)
	if err != nil {
		b.done()
	}
	return n, err
}

func (b *linkBody) Close() error {
	err := b.ReadCloser.Close()
	b.done()
	return err
}

func (b *linkBody) done() { b.once.Do(func() { b.l.release(b.turn) }) }

// nextArrival waits for the link's next arrival; the bound only keeps a broken build from
// hanging the test run, nothing is timed.
func (l *serialLink) nextArrival(t *testing.T, what string) linkArrival {
	t.Helper()
	select {
	case a := <-l.arrived:
		return a
	case <-time.After(2 * time.Minute):
		t.Fatalf("no request arrived: %s", what)
		return linkArrival{}
	}
}

// bulkTree is forty incompressible files of 96 KiB: a blob of many background batches.
func bulkTree() []treeFile {
	rng := rand.New(rand.NewSource(3))
	fs := []treeFile{{name: "data/", typ: tar.TypeDir, mode: 0o755}}
	for i := range 40 {
		b := make([]byte, 96<<10)
		rng.Read(b)
		fs = append(fs, treeFile{name: fmt.Sprintf("data/f-%02d", i), typ: tar.TypeReg, content: b, mode: 0o644})
	}
	return fs
}

// fileRange is the Range header a fill of name alone sends: its compressed frames.
func (e *lazyEnv) fileRange(t *testing.T, name string) string {
	t.Helper()
	blob := e.img.layers[0]
	l, _, err := chunked.Open(bytes.NewReader(blob), int64(len(blob)), e.img.descs[0].Annotations)
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range l.Files {
		if f.Entry.Name == name {
			return fmt.Sprintf("bytes=%d-%d", f.Range.Offset, f.Range.End()-1)
		}
	}
	t.Fatalf("%s is not in the layer", name)
	return ""
}

// TestLazyFillOvertakesBulk: after the start-up window, with the background fetch under way
// and a link that serves one request at a time, a reader of a file the background fetch has not
// reached waits only for the background batches already sent (two here), not for the rest of
// the image queued behind them: the fill's request goes out while the batches are held, no
// other batch is sent before it, and far more background bytes are fetched after it than before.
func TestLazyFillOvertakesBulk(t *testing.T) {
	const batchBytes, batches = 256 << 10, 2
	e, p := newLazyEnvOf(t, bulkTree())
	link := newSerialLink()
	r, err := imageref.Parse("docker://" + e.reg.Host + "/app:v0")
	if err != nil {
		t.Fatal(err)
	}
	src := registry.NewSource(registryClient(registry.WithTransport(link)), r)
	started := make(chan struct{})
	close(started) // no start-up window: the background fetch begins at once
	done := e.serveFrom(t, context.Background(), src, p, WithBackgroundHeld(started),
		func(o *options) { o.bulk = bulkLimits{batchBytes: batchBytes, batches: batches} })

	for i := range batches {
		if a := link.nextArrival(t, "background batch"); a.rng == e.fileRange(t, "data/f-38") {
			t.Fatalf("arrival %d is the target's range before the reader started", i)
		}
	}
	const target = "data/f-38"
	read := e.startRead(target)
	fill := link.nextArrival(t, "the reader's fill")
	if want := e.fileRange(t, target); fill.rng != want {
		t.Fatalf("request %d after the background's %d batches is %q, want the fill's %q", fill.seq, batches, fill.rng, want)
	}
	link.openLink()
	if b, err := e.waitRead(t, read, target, 2*time.Minute); err != nil || len(b) != len(e.files[target]) {
		t.Fatalf("%s: %d of %d bytes, %v", target, len(b), len(e.files[target]), err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	e.checkComplete(t, p)
	arrivals, served := link.logs()
	checkBulkOrder(t, served, fill.seq, batches, batchBytes)
	checkBulkWaited(t, arrivals, fill.seq)
}

// checkBulkWaited checks that no background batch was sent while the fill was in flight: every
// request after the fill's arrived once the fill's answer had been served (the fill ends after
// that, when its object is stored).
func checkBulkWaited(t *testing.T, arrivals []linkArrival, fillSeq int) {
	t.Helper()
	for _, a := range arrivals {
		if a.seq > fillSeq && !slices.Contains(a.served, fillSeq) {
			t.Fatalf("background request %d was sent while the fill (request %d) was in flight: served then %v", a.seq, fillSeq, a.served)
		}
	}
}

// checkBulkOrder checks the served log: before the fill only the batches in flight when it
// came, each within its bound; after it most of the background fetch.
func checkBulkOrder(t *testing.T, served []linkArrival, fillSeq, batches int, batchBytes int64) {
	t.Helper()
	var before, after int64
	var nBefore, nAfter int
	seen := false
	for _, a := range served {
		switch {
		case a.seq == fillSeq:
			seen = true
		case !seen:
			before += a.bytes
			nBefore++
		default:
			after += a.bytes
			nAfter++
		}
	}
	if !seen || nBefore != batches {
		t.Fatalf("fill served=%v after %d background requests, want after %d: %v", seen, nBefore, batches, served)
	}
	// A batch asks for at most batchBytes of ranges; merging them adds the gaps between.
	if bound := int64(batches) * (batchBytes + 16<<10); before > bound {
		t.Fatalf("%d background bytes were served before the fill, bound %d", before, bound)
	}
	if nAfter < 4*batches || after < 4*before {
		t.Fatalf("only %d background requests (%d bytes) after the fill, %d bytes before: the test's queue is too short", nAfter, after, before)
	}
	t.Logf("background before the fill: %d requests, %d bytes; after: %d requests, %d bytes", nBefore, before, nAfter, after)
}

func TestBulkBatches(t *testing.T) {
	rs := []source.Range{{Offset: 500, Length: 100}, {Offset: 0, Length: 300}, {Offset: 300, Length: 150}, {Offset: 700, Length: 900}, {Offset: 1600, Length: 10}}
	got := bulkBatches(rs, 400)
	want := "[[{0 300}] [{300 150} {500 100}] [{700 900}] [{1600 10}]]"
	if s := strings.ReplaceAll(fmt.Sprint(got), "\n", ""); s != want {
		t.Fatalf("batches %s, want %s", s, want)
	}
}
