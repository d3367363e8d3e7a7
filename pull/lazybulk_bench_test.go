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
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kura-oci/kura/imageref"
	"github.com/kura-oci/kura/registry"
)

// pacedLink is a client's base transport that models one link of rate bytes per second shared
// fairly by every blob GET with a Range: each body read of at most pacedChunk bytes takes its
// turn on one timeline. started is closed at the first body bytes.
type pacedLink struct {
	inner   http.RoundTripper
	rate    float64
	started chan struct{}
	once    sync.Once

	mu   sync.Mutex
	next time.Time
}

const pacedChunk = 32 << 10

func newPacedLink(rate float64) *pacedLink {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.DisableCompression = true
	t.TLSClientConfig = &tls.Config{InsecureSkipVerify: true}
	return &pacedLink{inner: t, rate: rate, started: make(chan struct{})}
}

func (l *pacedLink) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := l.inner.RoundTrip(req)
	if err == nil && req.Method == http.MethodGet && req.Header.Get("Range") != "" {
		resp.Body = &pacedBody{ReadCloser: resp.Body, l: l}
	}
	return resp, err
}

// slot books n bytes on the link's timeline and returns when they are through.
func (l *pacedLink) slot(n int) {
	l.mu.Lock()
	now := time.Now()
	at := l.next
	if at.Before(now) {
		at = now
	}
	l.next = at.Add(time.Duration(float64(n) / l.rate * float64(time.Second)))
	done := l.next
	l.mu.Unlock()
	time.Sleep(time.Until(done))
}

type pacedBody struct {
	io.ReadCloser
	l *pacedLink
}

func (b *pacedBody) Read(p []byte) (int, error) {
	if len(p) > pacedChunk {
		p = p[:pacedChunk]
	}
	n, err := b.ReadCloser.Read(p)
	if n > 0 {
		b.l.once.Do(func() { close(b.l.started) })
		b.l.slot(n)
	}
	return n, err
}

// fillTree is 24 incompressible files of 1 MiB the background fetch has queued, then the 8 MiB
// file a reader opens (last in blob order: the background fetch reaches it last).
func fillTree() []treeFile {
	rng := rand.New(rand.NewSource(5))
	fs := []treeFile{{name: "data/", typ: tar.TypeDir, mode: 0o755}}
	for i := range 24 {
		b := make([]byte, 1<<20)
		rng.Read(b)
		fs = append(fs, treeFile{name: fmt.Sprintf("data/bulk-%02d", i), typ: tar.TypeReg, content: b, mode: 0o644})
	}
	b := make([]byte, 8<<20)
	rng.Read(b)
	return append(fs, treeFile{name: "data/zz-target", typ: tar.TypeReg, content: b, mode: 0o644})
}

// BenchmarkLazyFillDuringBulk times a reader of an 8 MiB file the background fetch (24 MiB
// queued before it) has not reached, on a link of 40 MB/s shared fairly, the read starting as
// the fetch's first bytes arrive: with the fetch in batches that yield to fills (batched, the
// default) and as one set of requests per layer, as before (whole). Only the read is timed.
func BenchmarkLazyFillDuringBulk(b *testing.B) {
	for _, c := range []struct {
		name   string
		limits bulkLimits
	}{{"batched", bulkLimits{}}, {"whole", bulkLimits{batchBytes: 1 << 40, batches: 1}}} {
		b.Run(c.name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				benchFillDuringBulk(b, c.limits)
			}
		})
	}
}

func benchFillDuringBulk(b *testing.B, limits bulkLimits) {
	e, p := newLazyEnvOf(b, fillTree())
	link := newPacedLink(40e6)
	r, err := imageref.Parse("docker://" + e.reg.Host + "/app:v0")
	if err != nil {
		b.Fatal(err)
	}
	src := registry.NewSource(registryClient(registry.WithTransport(link)), r)
	ready, done := make(chan struct{}), make(chan error, 1)
	go func() {
		done <- ServeLazy(context.Background(), e.s, src, p, func() { close(ready) }, WithBackgroundHeld(closed()),
			func(o *options) { o.bulk = limits })
	}()
	<-ready
	<-link.started
	b.StartTimer()
	got, err := os.ReadFile(filepath.Join(e.target, "data/zz-target"))
	b.StopTimer()
	if err != nil || !bytes.Equal(got, e.files["data/zz-target"]) {
		b.Fatalf("target: %d bytes, %v", len(got), err)
	}
	if err := <-done; err != nil {
		b.Fatal(err)
	}
}

func closed() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
